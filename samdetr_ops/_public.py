"""The public functions of the registered ops (re-exported by samdetr_ops): argument checks, autocast, backend.
(Not to be confused with samdetr_ops.ops, the torchvision drop-in, or samdetr_ops._extension, the compiled
extension's loader.)"""
import torch

from . import _checks
from ._backend import resolve
from ._registry import OP_SPECS, public


def _autocast_device_types():
    """Device types with an autocast mode, found once at import: torch.compile in torch 2.11 cannot trace
    torch.amp.is_autocast_available (seen on the GPU machine), so _call looks the device type up in this set."""
    found = set()
    for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "privateuseone"):
        try:
            if torch.amp.is_autocast_available(device_type):
                found.add(device_type)
        except RuntimeError:  # a device type this torch build does not know
            pass
    return frozenset(found)


_AUTOCAST_DEVICE_TYPES = _autocast_device_types()


def _call(op, *args):
    """Validates the arguments of registered op `op` and runs it on the current backend. Under torch.autocast the op
    computes in float32 (sampling positions and box coordinates need more than 8 bits of mantissa) and returns the
    dtype of its first argument, as torchvision's roi_align does."""
    out_dtype = None
    first = args[0]
    if isinstance(first, torch.Tensor):  # else the check below names the bad argument
        device_type = first.device.type
        if device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
            out_dtype = first.dtype
            args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    OP_SPECS[op].check(*args)
    out = resolve(op, first.device)(*args)
    return out if out_dtype is None else out.to(out_dtype)


def _pooled(op, output_size):
    """An int S or an (h, w) pair -> [h, w], the form every backend takes (the schemas' int[2])."""
    return list(_checks.pooled_size(op, output_size))


@public
def roi_align(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """RoIAlign of B x N boxes: features (B, C, H, W), boxes (B, N, 4) as x1, y1, x2, y2 in input pixels
    (features are `spatial_scale` times smaller) -> (B, N, C, S_h, S_w), output_size = S (S x S bins) or
    (S_h, S_w). Equal to torchvision's roi_align on `list(boxes.unbind(0))`; differentiable in `features` only,
    like torchvision's. For torchvision's own signature and box forms, see samdetr_ops.ops.roi_align."""
    return _call("roi_align", features, boxes, _pooled("roi_align", output_size), float(spatial_scale),
                 sampling_ratio, bool(aligned))


@public
def semantic_align(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                   aligned=True):
    """SAM-DETR's semantics aligner, fused: RoIAlign each box to S_h x S_w (output_size = S or (S_h, S_w)), sample
    the C features at its M salient points (grid_sample, bilinear, zero padding, align_corners=False) and multiply
    by sigmoid(weight_logits).

    features (B, C, H, W) (channels-last is the fast path), boxes (B, N, 4) x1 y1 x2 y2 in input pixels,
    points (B, N, M, 2) normalised (x, y) over the RoI grid, weight_logits (B, N, M, C) -> (B, N, M, C).
    Differentiable in features, points and weight_logits (not boxes)."""
    return _call("semantic_align", features, boxes, points, weight_logits, _pooled("semantic_align", output_size),
                 float(spatial_scale), sampling_ratio, bool(aligned))


@public
def salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature=10000.0):
    """Sinusoidal embedding of salient points, reweighted: position = center + 0.5 * wh * points, each coordinate
    embedded with D/2 sine/cosine features (y first, then x), times sigmoid(weight_logits).

    boxes_cxcywh (B, N, 4) normalised, points (B, N, M, 2) in [-1, 1], weight_logits (B, N, M, D), D even
    -> (B, N, M, D). Differentiable in all three tensors."""
    return _call("salient_point_pos_embed", boxes_cxcywh, points, weight_logits, float(temperature))


@public
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention, fused: Deformable-DETR's MSDeformAttnFunction on any device and dtype.

    value (B, S, heads, D), the L levels' maps flattened row-major one after the other (S = sum of H_l * W_l);
    spatial_shapes (L, 2) int64 (H_l, W_l); level_start_index (L,) int64, the cumulative level sizes;
    sampling_locations (B, Q, heads, L, P, 2) as (x, y) in [0, 1] of each level's map; attention_weights
    (B, Q, heads, L, P) -> (B, Q, heads * D): per query and head, the sum over levels and points of weight * value
    sampled bilinearly at (x * W_l - 0.5, y * H_l - 0.5), zero outside the map (grid_sample, align_corners=False).
    NaN/Inf locations contribute zero. Differentiable in value, sampling_locations and attention_weights."""
    return _call("ms_deform_attn", value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
