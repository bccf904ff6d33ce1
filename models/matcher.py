"""Hungarian matching of predictions to targets (scipy's linear_sum_assignment), of every decoder layer at once:
the cost matrices of all layers and images are computed on the device in one batched pass and read on the host in
one transfer (the step's only device-to-host sync), then assigned per layer and image exactly as one at a time."""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .config import DetectorConfig

OFFICIAL = DetectorConfig()


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising cost_class * focal class cost + cost_bbox * L1 + cost_giou * (-GIoU).

    forward(outputs, targets): outputs {"pred_logits": (B, Q, K), "pred_boxes": (B, Q, 4) cxcywh}, targets a list
    of B dicts {"labels": (T_b,), "boxes": (T_b, 4) cxcywh} -> a list of B (query_index, target_index) int64
    pairs of length min(Q, T_b). match_layers does the same for L layers at once. The defaults are
    DetectorConfig's (the official ones)."""

    def __init__(self, cost_class=OFFICIAL.set_cost_class, cost_bbox=OFFICIAL.set_cost_bbox,
                 cost_giou=OFFICIAL.set_cost_giou, alpha=OFFICIAL.focal_alpha, gamma=OFFICIAL.focal_gamma):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def forward(self, outputs, targets):
        layers = self.match_layers(outputs["pred_logits"][None], outputs["pred_boxes"][None], targets)
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in layers[0]]

    @torch.no_grad()
    def cost_matrices(self, logits, boxes, target_labels, target_boxes):
        """logits (L, B, Q, K), boxes (L, B, Q, 4) cxcywh, target_labels (T,), target_boxes (T, 4) of all images
        -> the cost of every query of every image against every target (L, B, Q, T)."""
        L, B, Q = logits.shape[:3]
        prob = logits.flatten(1, 2).sigmoid()[..., target_labels]                         # (L, B*Q, T)
        pred_boxes = boxes.flatten(1, 2)                                                   # (L, B*Q, 4)
        target_boxes = target_boxes.to(pred_boxes.dtype)
        negative = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        positive = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        # GIoU of 2-D box sets (older torchvisions, e.g. the GPU machine's 0.26, take no batch dimension)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes.flatten(0, 1)), box_cxcywh_to_xyxy(target_boxes))
        cost = (self.cost_class * (positive - negative)
                + self.cost_bbox * torch.cdist(pred_boxes, target_boxes[None].expand(L, -1, -1), p=1)
                - self.cost_giou * giou.view(L, B * Q, -1))
        return cost.view(L, B, Q, -1)

    @torch.no_grad()
    def match_layers(self, logits, boxes, targets):
        """logits (L, B, Q, K), boxes (L, B, Q, 4) cxcywh, targets as forward's -> L lists of B (query_index,
        target_index) numpy int64 pairs: each layer's and image's assignment, from one host transfer."""
        L, B = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = np.empty(0, dtype=np.int64)
            return [[(empty, empty) for _ in range(B)] for _ in range(L)]
        cost = self.cost_matrices(logits, boxes, torch.cat([t["labels"] for t in targets]),
                                  torch.cat([t["boxes"] for t in targets]))
        cost = np.asarray(to_host(cost))                                                  # (L, B, Q, T)
        offsets = np.cumsum([0] + sizes)
        return [[tuple(np.asarray(x, dtype=np.int64)
                       for x in linear_sum_assignment(cost[layer, b, :, offsets[b]:offsets[b + 1]]))
                 for b in range(B)] for layer in range(L)]


def to_host(tensor):
    """The tensor on the host: one copy into pinned memory and a wait for it on CUDA (the host reads it next)."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host


def build_matcher(cfg=None):
    """cfg: DetectorConfig (None: the official defaults) -> its set_cost_* weights and focal alpha/gamma."""
    cfg = cfg or OFFICIAL
    return HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.focal_alpha,
                            cfg.focal_gamma)
