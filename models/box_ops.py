"""Box conversions and inverse sigmoid. Boxes are (..., 4): cxcywh = center x, y, width, height;
xyxy = x1, y1, x2, y2."""
import torch
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["box_cxcywh_to_xyxy", "generalized_box_iou", "inverse_sigmoid"]


def box_cxcywh_to_xyxy(boxes):
    """(..., 4) cx cy w h -> (..., 4) x1 y1 x2 y2."""
    return box_convert(boxes, "cxcywh", "xyxy")


def inverse_sigmoid(x, eps=1e-5):
    """logit(x) with x clamped to [0, 1] and both x and 1 - x kept >= eps, so that boxes at the border of the
    image (0 or 1) map to finite logits."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
