"""Loads the compiled extension and completes its ops for PyTorch: fake (meta) kernels for torch.compile and
autograd formulas. The schemas and the CPU/CUDA kernels are registered in C++ (csrc/)."""
import torch

try:
    from . import _C  # noqa: F401  (registers the samdetr_ops::* schemas and kernels)

    _LOAD_ERROR = None
except ImportError as error:  # not built: the public functions fall back to samdetr_ops.reference
    _LOAD_ERROR = error

from . import _autograd, _checks

LOADED = _LOAD_ERROR is None


OP_NAMES = ("roi_align", "semantic_align", "salient_point_pos_embed")

# (op name, device type) pairs the compiled extension has kernels for, read once at import (registrations are
# static), so that backend choice is a plain lookup that torch.compile traces through.
KERNELS = frozenset(
    (op, device_type)
    for op in OP_NAMES
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"samdetr_ops::{op}", key)
)


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether the compiled extension registered a kernel of samdetr_ops::<op_name> for this device type."""
    return (op_name, device_type) in KERNELS


def _channels_last_empty(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


if LOADED:
    ops = torch.ops.samdetr_ops

    # ---- roi_align -------------------------------------------------------------------------------------------
    @torch.library.register_fake("samdetr_ops::roi_align")
    def _roi_align_fake(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
        pooled_h, pooled_w = _checks.roi_inputs("roi_align", features, boxes, output_size, sampling_ratio)
        B, N = boxes.shape[:2]
        return features.new_empty((B, N, features.shape[1], pooled_h, pooled_w))

    @torch.library.register_fake("samdetr_ops::roi_align_backward")
    def _roi_align_backward_fake(grad_output, boxes, feature_shape, output_size, spatial_scale, sampling_ratio,
                                 aligned):
        return _channels_last_empty(feature_shape, grad_output)

    _autograd.register("samdetr_ops::roi_align", ops.roi_align_backward, "roi_align")

    # ---- semantic_align --------------------------------------------------------------------------------------
    @torch.library.register_fake("samdetr_ops::semantic_align")
    def _semantic_align_fake(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0,
                             sampling_ratio=-1, aligned=True):
        _checks.semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio)
        return torch.empty_like(weight_logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("samdetr_ops::semantic_align_backward")
    def _semantic_align_backward_fake(grad_output, features, boxes, points, weight_logits, output_size,
                                      spatial_scale, sampling_ratio, aligned, output_mask):
        return (_channels_last_empty(features.shape, features),
                torch.empty_like(points, memory_format=torch.contiguous_format),
                torch.empty_like(weight_logits, memory_format=torch.contiguous_format))

    _autograd.register("samdetr_ops::semantic_align", ops.semantic_align_backward, "semantic_align")

    # ---- salient_point_pos_embed -----------------------------------------------------------------------------
    @torch.library.register_fake("samdetr_ops::salient_point_pos_embed")
    def _pos_embed_fake(boxes_cxcywh, points, weight_logits, temperature=10000.0):
        _checks.pos_embed_inputs(boxes_cxcywh, points, weight_logits)
        return torch.empty_like(weight_logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("samdetr_ops::salient_point_pos_embed_backward")
    def _pos_embed_backward_fake(grad_output, boxes_cxcywh, points, weight_logits, temperature):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                     for t in (boxes_cxcywh, points, weight_logits))

    _autograd.register("samdetr_ops::salient_point_pos_embed", ops.salient_point_pos_embed_backward,
                       "salient_point_pos_embed")

    # Under torch.autocast the ops compute in float32 (direct torch.ops calls too; the public functions cast
    # before validating, so mixed-precision inputs pass their dtype checks).
    for _op in OP_NAMES:
        for _device_type in ("cpu", "cuda"):
            torch.library.register_autocast(f"samdetr_ops::{_op}", _device_type, torch.float32)
