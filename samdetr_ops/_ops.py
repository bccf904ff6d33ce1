"""Loads the compiled extension and completes its ops for PyTorch: fake (meta) kernels for torch.compile and
autograd formulas. The schemas and the CPU/CUDA kernels are registered in C++ (csrc/)."""
import torch

try:
    from . import _C  # noqa: F401  (registers the samdetr_ops::* schemas and kernels)

    _LOAD_ERROR = None
except ImportError as error:  # not built: the public functions fall back to samdetr_ops.reference
    _LOAD_ERROR = error

from . import _checks

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
        _checks.roi_inputs("roi_align", features, boxes, output_size, sampling_ratio)
        B, N = boxes.shape[:2]
        return features.new_empty((B, N, features.shape[1], output_size, output_size))

    @torch.library.register_fake("samdetr_ops::roi_align_backward")
    def _roi_align_backward_fake(grad_output, boxes, feature_shape, output_size, spatial_scale, sampling_ratio,
                                 aligned):
        return _channels_last_empty(feature_shape, grad_output)

    def _roi_align_setup_context(ctx, inputs, output):
        features, boxes, output_size, spatial_scale, sampling_ratio, aligned = inputs
        ctx.save_for_backward(boxes)  # the features themselves are not needed: the op is linear in them
        ctx.feature_shape = features.shape
        ctx.args = (output_size, spatial_scale, sampling_ratio, aligned)

    def _roi_align_backward(ctx, grad_output):
        (boxes,) = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[0]:
            grad_features = ops.roi_align_backward(grad_output, boxes, list(ctx.feature_shape), *ctx.args)
        return grad_features, None, None, None, None, None

    torch.library.register_autograd("samdetr_ops::roi_align", _roi_align_backward,
                                    setup_context=_roi_align_setup_context)

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

    def _semantic_align_setup_context(ctx, inputs, output):
        features, boxes, points, weight_logits, *args = inputs
        # Only the inputs are kept: the backward recomputes the few RoI bins it needs instead of saving the
        # (B*N, C, S, S) RoI features and sampled values the unfused sequence keeps alive.
        ctx.save_for_backward(features, boxes, points, weight_logits)
        ctx.args = tuple(args)

    def _semantic_align_backward(ctx, grad_output):
        features, boxes, points, weight_logits = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]]
        grads = [None] * 3
        if any(mask):
            grads = ops.semantic_align_backward(grad_output, features, boxes, points, weight_logits, *ctx.args,
                                                mask)
        grad_features, grad_points, grad_logits = (g if need else None for g, need in zip(grads, mask))
        return grad_features, None, grad_points, grad_logits, None, None, None, None

    torch.library.register_autograd("samdetr_ops::semantic_align", _semantic_align_backward,
                                    setup_context=_semantic_align_setup_context)

    # ---- salient_point_pos_embed -----------------------------------------------------------------------------
    @torch.library.register_fake("samdetr_ops::salient_point_pos_embed")
    def _pos_embed_fake(boxes_cxcywh, points, weight_logits, temperature=10000.0):
        _checks.pos_embed_inputs(boxes_cxcywh, points, weight_logits)
        return torch.empty_like(weight_logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("samdetr_ops::salient_point_pos_embed_backward")
    def _pos_embed_backward_fake(grad_output, boxes_cxcywh, points, weight_logits, temperature):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                     for t in (boxes_cxcywh, points, weight_logits))

    def _pos_embed_setup_context(ctx, inputs, output):
        boxes_cxcywh, points, weight_logits, temperature = inputs
        ctx.save_for_backward(boxes_cxcywh, points, weight_logits)
        ctx.temperature = temperature

    def _pos_embed_backward(ctx, grad_output):
        boxes_cxcywh, points, weight_logits = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:3]):
            return None, None, None, None
        grads = ops.salient_point_pos_embed_backward(grad_output, boxes_cxcywh, points, weight_logits,
                                                     ctx.temperature)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3])) + (None,)

    torch.library.register_autograd("samdetr_ops::salient_point_pos_embed", _pos_embed_backward,
                                    setup_context=_pos_embed_setup_context)

    # Under torch.autocast the ops compute in float32 (direct torch.ops calls too; the public functions cast
    # before validating, so mixed-precision inputs pass their dtype checks).
    for _op in OP_NAMES:
        for _device_type in ("cpu", "cuda"):
            torch.library.register_autocast(f"samdetr_ops::{_op}", _device_type, torch.float32)
