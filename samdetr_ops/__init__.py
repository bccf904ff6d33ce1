"""samdetr_ops: fused kernels for SAM-DETR's semantics aligner (CVPR 2022).

Public ops (each equal, up to float rounding, to the unfused sequence of the same name in
`samdetr_ops.reference`, differentiable, and usable under torch.compile(fullgraph=True)):

    roi_align(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        features (B, C, H, W), boxes (B, N, 4) x1 y1 x2 y2 -> (B, N, C, S_h, S_w), output_size = S or (S_h, S_w)
    semantic_align(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0,
                   sampling_ratio=-1, aligned=True)
        + points (B, N, M, 2) in grid_sample coordinates of the RoI grid, weight_logits (B, N, M, C)
        -> (B, N, M, C) = features at the points * sigmoid(weight_logits)
    salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature=10000.0)
        boxes_cxcywh (B, N, 4), points (B, N, M, 2), weight_logits (B, N, M, D) -> (B, N, M, D)
"""
import torch

from . import _checks, _ops, reference
from ._backend import BACKENDS, current_backend, use_backend

__all__ = ["roi_align", "semantic_align", "salient_point_pos_embed", "has_extension", "use_backend",
           "current_backend", "BACKENDS", "reference"]
__version__ = "0.1.0"


def has_extension() -> bool:
    """Whether the compiled C++ (and, if built, CUDA) kernels are loaded."""
    return _ops.LOADED


def _autocast_to_float32(*tensors):
    """Under torch.autocast every op computes in float32 (as torchvision's roi_align and grid_sample do): the
    sampling arithmetic and box coordinates need more than float16/bfloat16 precision. Other inputs pass as is."""
    if not isinstance(tensors[0], torch.Tensor):
        return tensors  # the validation that follows names the bad argument
    device_type = tensors[0].device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return tuple(t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)
    return tensors


def roi_align(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """RoIAlign of B x N boxes: features (B, C, H, W), boxes (B, N, 4) as x1, y1, x2, y2 in input pixels
    (features are `spatial_scale` times smaller) -> (B, N, C, S_h, S_w), output_size = S (S x S bins) or
    (S_h, S_w). Equal to torchvision's roi_align on `list(boxes.unbind(0))`; differentiable in `features` only,
    like torchvision's."""
    features, boxes = _autocast_to_float32(features, boxes)
    pooled = _checks.roi_inputs("roi_align", features, boxes, output_size, sampling_ratio)
    impl = _backend_resolve("roi_align", features.device)
    return impl(features, boxes, list(pooled), float(spatial_scale), sampling_ratio, bool(aligned))


def semantic_align(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                   aligned=True):
    """SAM-DETR's semantics aligner, fused: RoIAlign each box to S_h x S_w (output_size = S or (S_h, S_w)),
    sample the C features at its M salient
    points (grid_sample, bilinear, zero padding, align_corners=False) and multiply by sigmoid(weight_logits).

    features (B, C, H, W) (channels-last is the fast path), boxes (B, N, 4) x1 y1 x2 y2 in input pixels,
    points (B, N, M, 2) normalised (x, y) over the RoI grid, weight_logits (B, N, M, C) -> (B, N, M, C).
    Differentiable in features, points and weight_logits (not boxes)."""
    features, boxes, points, weight_logits = _autocast_to_float32(features, boxes, points, weight_logits)
    pooled = _checks.semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio)
    impl = _backend_resolve("semantic_align", features.device)
    return impl(features, boxes, points, weight_logits, list(pooled), float(spatial_scale), sampling_ratio,
                bool(aligned))


def salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature=10000.0):
    """Sinusoidal embedding of salient points, reweighted: position = center + 0.5 * wh * points, each coordinate
    embedded with D/2 sine/cosine features (y first, then x), times sigmoid(weight_logits).

    boxes_cxcywh (B, N, 4) normalised, points (B, N, M, 2) in [-1, 1], weight_logits (B, N, M, D), D even
    -> (B, N, M, D). Differentiable in all three tensors."""
    boxes_cxcywh, points, weight_logits = _autocast_to_float32(boxes_cxcywh, points, weight_logits)
    _checks.pos_embed_inputs(boxes_cxcywh, points, weight_logits)
    impl = _backend_resolve("salient_point_pos_embed", boxes_cxcywh.device)
    return impl(boxes_cxcywh, points, weight_logits, float(temperature))


from ._backend import resolve as _backend_resolve  # noqa: E402
