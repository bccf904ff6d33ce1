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
    ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        Deformable-DETR's multi-scale deformable attention: value (B, S, heads, D), locations
        (B, Q, heads, L, P, 2), weights (B, Q, heads, L, P) -> (B, Q, heads * D)

`samdetr_ops.ops` holds drop-in replacements for torchvision.ops (roi_align, RoIAlign). `samdetr_ops.OP_SPECS` is
the op registry: {name: OpSpec} (OPS, its former name, still works and warns).
"""
import warnings

from . import _extension, ops, reference
from ._backend import BACKENDS, available_backends, current_backend, set_backend, use_backend
from ._public import ms_deform_attn, roi_align, salient_point_pos_embed, semantic_align
from ._registry import OP_SPECS

__all__ = ["roi_align", "semantic_align", "salient_point_pos_embed", "ms_deform_attn", "has_extension", "set_backend",
           "use_backend", "current_backend", "available_backends", "BACKENDS", "OP_SPECS", "ops", "reference"]
__version__ = "0.1.0"


def has_extension() -> bool:
    """Whether the compiled C++ (and, if built, CUDA) kernels are loaded."""
    return _extension.LOADED


# former public names -> their current names: reading a former name warns (DeprecationWarning) and returns the
# current object
_DEPRECATED = {"OPS": "OP_SPECS"}


def __getattr__(name):
    if name in _DEPRECATED:
        warnings.warn(f"samdetr_ops.{name} is deprecated; use samdetr_ops.{_DEPRECATED[name]}", DeprecationWarning,
                      stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
