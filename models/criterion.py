"""SAM-DETR's set loss: Hungarian matching, then sigmoid focal loss on the classes and L1 + GIoU on the matched
boxes, on the final and (aux_loss) every intermediate decoder layer."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import OFFICIAL, build_matcher


class SetCriterion(nn.Module):
    """forward(outputs, targets) -> dict of losses: loss_ce, loss_bbox, loss_giou (+ _i for the auxiliary layer
    i), and, for logging only (no gradient, not in weight_dict), class_error (final layer) and
    cardinality_error (+ _i).
    The losses are normalised by the number of target boxes, averaged over processes under DDP.
    Labels lie in [0, num_classes); the total loss is sum(weight_dict[k] * losses[k])."""

    def __init__(self, num_classes, matcher, weight_dict, focal_alpha=OFFICIAL.focal_alpha,
                 focal_gamma=OFFICIAL.focal_gamma):
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def loss_labels(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]                                                 # (B, Q, K)
        batch_index, query_index = matched_query_index(indices, logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        onehot = torch.zeros_like(logits)
        onehot[batch_index, query_index, matched_labels] = 1
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes
        return {"loss_ce": loss}, (logits, batch_index, query_index, matched_labels)

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        batch_index, query_index = matched_query_index(indices, outputs["pred_boxes"].device)
        pred = outputs["pred_boxes"][batch_index, query_index]                          # (T, 4)
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred.dtype)
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)))
        return {"loss_bbox": F.l1_loss(pred, target, reduction="sum") / num_boxes,
                "loss_giou": (1 - giou).sum() / num_boxes}

    @torch.no_grad()
    def logging_metrics(self, outputs, targets, labels_state):
        logits, batch_index, query_index, matched_labels = labels_state
        if len(matched_labels) == 0:
            class_error = logits.new_zeros(())
        else:
            correct = logits[batch_index, query_index].argmax(-1) == matched_labels
            class_error = 100 - 100 * correct.float().mean()
        return {"class_error": class_error}

    @torch.no_grad()
    def cardinality_error(self, outputs, targets):
        logits = outputs["pred_logits"]
        # queries predicted as objects: argmax not the last class, as the official logging counts them
        num_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        num_targets = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device).float()
        return {"cardinality_error": F.l1_loss(num_pred, num_targets)}

    def forward(self, outputs, targets):
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))],
                                    device=outputs["pred_logits"].device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        num_boxes = num_boxes.clamp(min=1).item()

        losses = {}
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        for suffix, layer_outputs in layers:
            indices = self.matcher(layer_outputs, targets)
            label_losses, labels_state = self.loss_labels(layer_outputs, targets, indices, num_boxes)
            layer_losses = {**label_losses, **self.loss_boxes(layer_outputs, targets, indices, num_boxes),
                            **self.cardinality_error(layer_outputs, targets)}
            if suffix == "":
                layer_losses.update(self.logging_metrics(layer_outputs, targets, labels_state))
            losses.update({k + suffix: v for k, v in layer_losses.items()})
        return losses


def matched_query_index(indices, device):
    """[(query_index, target_index)] per image -> (batch_index, query_index) of every match, concatenated."""
    batch_index = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
    return batch_index.to(device), torch.cat([q for q, _ in indices]).to(device)


def build_criterion(cfg):
    """cfg: DetectorConfig -> SetCriterion with its loss weights (with aux_loss, every other decoder layer's loss
    "<name>_<layer>" with the same weight), focal alpha/gamma and build_matcher(cfg)."""
    weight_dict = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        weight_dict.update({f"{k}_{i}": v for i in range(cfg.dec_layers - 1) for k, v in list(weight_dict.items())})
    return SetCriterion(cfg.num_classes, build_matcher(cfg), weight_dict, cfg.focal_alpha, cfg.focal_gamma)
