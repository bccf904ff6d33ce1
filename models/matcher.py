"""Hungarian matching of predictions to targets (scipy's linear_sum_assignment)."""
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
    pairs of length min(Q, T_b). The defaults are DetectorConfig's (the official ones)."""

    def __init__(self, cost_class=OFFICIAL.set_cost_class, cost_bbox=OFFICIAL.set_cost_bbox,
                 cost_giou=OFFICIAL.set_cost_giou, alpha=OFFICIAL.focal_alpha, gamma=OFFICIAL.focal_gamma):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def forward(self, outputs, targets):
        B, Q = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(B)]
        prob = outputs["pred_logits"].flatten(0, 1).sigmoid()                         # (B*Q, K)
        pred_boxes = outputs["pred_boxes"].flatten(0, 1)                               # (B*Q, 4)
        target_labels = torch.cat([t["labels"] for t in targets])                     # (T,)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes.dtype)  # (T, 4)

        prob = prob[:, target_labels]                                                  # (B*Q, T)
        negative = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        positive = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost = (self.cost_class * (positive - negative)
                + self.cost_bbox * torch.cdist(pred_boxes, target_boxes, p=1)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes),
                                                       box_cxcywh_to_xyxy(target_boxes)))
        cost = cost.view(B, Q, -1).cpu()                                               # (B, Q, T)
        indices = [linear_sum_assignment(c[b]) for b, c in enumerate(cost.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


def build_matcher(cfg=None):
    """cfg: DetectorConfig (None: the official defaults) -> its set_cost_* weights and focal alpha/gamma."""
    cfg = cfg or OFFICIAL
    return HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.focal_alpha,
                            cfg.focal_gamma)
