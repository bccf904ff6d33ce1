"""SAM-DETR's set loss: Hungarian matching, then sigmoid focal loss on the classes and L1 + GIoU on the matched
boxes, on the final and (aux_loss) every intermediate decoder layer.

All layers are computed together: their outputs are stacked (L, B, Q, ...) (the model's own stacked tensor when
the layers are views of one), matched in one pass (models.matcher: one host transfer for all layers and images),
their matched pairs gathered with one index op (every layer has the same number of matches) and their losses
summed per layer with one reduction. No value is read back on the host besides the matcher's costs."""
import numpy as np
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

    def loss_labels(self, logits, matches, target_labels, num_boxes):
        """logits (L, B, Q, K); matches (layer, batch, query, target) index tensors (L, T) -> focal loss (L,)."""
        layer, batch, query, target = matches
        onehot = torch.zeros_like(logits)
        onehot[layer, batch, query, target_labels[target]] = 1
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        return loss.flatten(1).sum(1) / num_boxes

    def loss_boxes(self, boxes, matches, target_boxes, num_boxes):
        """boxes (L, B, Q, 4) -> L1 loss (L,), GIoU loss (L,) of the matched pairs."""
        layer, batch, query, target = matches
        pred = boxes[layer, batch, query]                                                 # (L, T, 4)
        target = target_boxes.to(pred.dtype)[target]                                     # (L, T, 4)
        # the pairs' GIoU: the diagonal of 2-D box sets, as DETR computes it (older torchvisions, e.g. the GPU
        # machine's 0.26, take no batch dimension)
        L, T = pred.shape[:2]
        giou = torch.diagonal(generalized_box_iou(box_cxcywh_to_xyxy(pred.reshape(L * T, 4)),
                                                  box_cxcywh_to_xyxy(target.reshape(L * T, 4)))).view(L, T)
        return (F.l1_loss(pred, target, reduction="none").flatten(1).sum(1) / num_boxes,
                (1 - giou).flatten(1).sum(1) / num_boxes)

    @torch.no_grad()
    def class_error(self, logits, matches, target_labels):
        """The final layer's top-1 error (%) on its matched queries."""
        _, batch, query, target = (index[-1] for index in matches)
        if len(target) == 0:
            return logits.new_zeros(())
        correct = logits[-1, batch, query].argmax(-1) == target_labels[target]
        return 100 - 100 * correct.float().mean()

    @torch.no_grad()
    def cardinality_error(self, logits, targets):
        """(L,): per layer, the mean over images of |number of queries predicted as objects - number of targets|."""
        # queries predicted as objects: argmax not the last class, as the official logging counts them
        num_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(-1).float()          # (L, B)
        num_targets = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device).float()
        return (num_pred - num_targets).abs().mean(-1)

    def num_boxes(self, targets, device):
        """The number of target boxes (at least 1), averaged over the DDP processes: a Python float, or under DDP
        a tensor (all-reduced, never read on the host)."""
        num_boxes = float(sum(len(t["labels"]) for t in targets))
        if not (dist.is_available() and dist.is_initialized()):
            return max(num_boxes, 1.0)
        num_boxes = torch.as_tensor(num_boxes, device=device)
        dist.all_reduce(num_boxes)
        return (num_boxes / dist.get_world_size()).clamp(min=1)

    def forward(self, outputs, targets):
        layers = list(outputs.get("aux_outputs", [])) + [outputs]                         # in decoder order
        logits = stacked([layer["pred_logits"] for layer in layers])                      # (L, B, Q, K)
        boxes = stacked([layer["pred_boxes"] for layer in layers])                        # (L, B, Q, 4)
        num_boxes = self.num_boxes(targets, logits.device)
        target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(logits.device)
        matches = matched_indices(self.matcher.match_layers(logits, boxes, targets),
                                  [len(t["labels"]) for t in targets], logits.device)

        loss_ce = self.loss_labels(logits, matches, target_labels, num_boxes)
        loss_bbox, loss_giou = self.loss_boxes(boxes, matches, target_boxes, num_boxes)
        cardinality_error = self.cardinality_error(logits, targets)
        L = len(layers)
        losses = {"loss_ce": loss_ce[-1], "loss_bbox": loss_bbox[-1], "loss_giou": loss_giou[-1],
                  "cardinality_error": cardinality_error[-1],
                  "class_error": self.class_error(logits, matches, target_labels)}
        for i in range(L - 1):
            losses.update({f"loss_ce_{i}": loss_ce[i], f"loss_bbox_{i}": loss_bbox[i],
                           f"loss_giou_{i}": loss_giou[i], f"cardinality_error_{i}": cardinality_error[i]})
        return losses


def stacked(tensors):
    """torch.stack(tensors), or, when they are the consecutive slices [0], [1], ... of one tensor (a model's
    stacked per-layer outputs), that tensor itself: no copy, and one gradient in backward instead of one per
    slice."""
    base = tensors[0]._base
    if base is not None and base.dim() == tensors[0].dim() + 1 and base.shape[0] == len(tensors) and all(
            t._base is base and t.shape == base.shape[1:] and t.stride() == base.stride()[1:]
            and t.storage_offset() == base.storage_offset() + i * base.stride(0) for i, t in enumerate(tensors)):
        return base
    return torch.stack(tensors)


def matched_indices(layer_indices, target_sizes, device):
    """L lists of B (query_index, target_index) pairs, the number of targets of each image -> (layer, batch,
    query, target) int64 tensors (L, T) on `device` (one transfer), target indexing the targets of all images
    concatenated; every layer has the same number T of matches (min(Q, T_b) per image b)."""
    offsets = np.cumsum([0] + list(target_sizes))
    index = np.stack([np.stack([
        np.full(sum(len(q) for q, _ in per_image), layer, dtype=np.int64),
        np.concatenate([np.full(len(q), b, dtype=np.int64) for b, (q, _) in enumerate(per_image)]),
        np.concatenate([q for q, _ in per_image]).astype(np.int64),
        np.concatenate([j + offsets[b] for b, (_, j) in enumerate(per_image)]).astype(np.int64)])
        for layer, per_image in enumerate(layer_indices)], axis=1)                     # (4, L, T)
    index = torch.from_numpy(index)
    if device.type == "cuda":
        index = index.pin_memory()
    return index.to(device, non_blocking=True).unbind(0)


def build_criterion(cfg):
    """cfg: DetectorConfig -> SetCriterion with its loss weights (with aux_loss, every other decoder layer's loss
    "<name>_<layer>" with the same weight), focal alpha/gamma and build_matcher(cfg)."""
    weight_dict = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if cfg.aux_loss:
        weight_dict.update({f"{k}_{i}": v for i in range(cfg.dec_layers - 1) for k, v in list(weight_dict.items())})
    return SetCriterion(cfg.num_classes, build_matcher(cfg), weight_dict, cfg.focal_alpha, cfg.focal_gamma)
