"""Autograd formulas of the three ops, shared by every backend that registers them as custom ops (the compiled
samdetr_ops::* and the Triton samdetr_ops_triton::*). Each backend's backward op has the same signature:

    roi_align_backward(grad_output, boxes, feature_shape, output_size, spatial_scale, sampling_ratio, aligned)
    semantic_align_backward(grad_output, features, boxes, points, weight_logits, output_size, spatial_scale,
                            sampling_ratio, aligned, output_mask)
    salient_point_pos_embed_backward(grad_output, boxes_cxcywh, points, weight_logits, temperature)
"""
import torch


def register(forward_op, backward_op, formula):
    """Registers forward_op's autograd (forward_op: an op name or a triton_op) with backward_op as its backward, by
    `formula`, one of the functions below (an OpSpec's `autograd` field): backward_op -> (setup_context, backward)."""
    setup_context, backward = formula(backward_op)
    if isinstance(forward_op, str):
        torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    else:
        forward_op.register_autograd(backward, setup_context=setup_context)


def _will_use_gradient(ctx, index):
    """Whether this backward pass uses the gradient of input `index`. `ctx.needs_input_grad` only says whether the
    input requires grad; under torch.autograd.grad(out, some_inputs) the engine also knows which of the input edges
    it will follow (the check torch.utils.checkpoint makes). Where that is unknown (traced backward), assume it."""
    if not ctx.needs_input_grad[index]:
        return False
    next_functions = getattr(ctx, "next_functions", None)
    if not next_functions or next_functions[index][0] is None:
        return True
    try:
        return torch._C._will_engine_execute_node(next_functions[index][0])
    except RuntimeError:  # not inside an engine-run backward
        return True


def roi_align(backward_op):
    def setup_context(ctx, inputs, output):
        features, boxes, output_size, spatial_scale, sampling_ratio, aligned = inputs
        ctx.save_for_backward(boxes)  # not the features: the op is linear in them
        ctx.feature_shape = list(features.shape)
        ctx.args = (output_size, spatial_scale, sampling_ratio, aligned)

    def backward(ctx, grad_output):
        (boxes,) = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[0]:
            grad_features = backward_op(grad_output, boxes, ctx.feature_shape, *ctx.args)
        return grad_features, None, None, None, None, None

    return setup_context, backward


def semantic_align(backward_op):
    def setup_context(ctx, inputs, output):
        features, boxes, points, weight_logits, *args = inputs
        # Only the inputs are kept: the backward recomputes the few RoI bins it needs instead of saving the
        # (B*N, C, S, S) RoI features and sampled values the unfused sequence keeps alive.
        ctx.save_for_backward(features, boxes, points, weight_logits)
        ctx.args = tuple(args)

    def backward(ctx, grad_output):
        mask = [_will_use_gradient(ctx, i) for i in (0, 2, 3)]  # features, points, weight_logits
        if not any(mask):
            return (None,) * 8
        grads = backward_op(grad_output, *ctx.saved_tensors, *ctx.args, mask)
        grad_features, grad_points, grad_logits = (g if n else None for g, n in zip(grads, mask))
        return grad_features, None, grad_points, grad_logits, None, None, None, None

    return setup_context, backward


def salient_point_pos_embed(backward_op):
    def setup_context(ctx, inputs, output):
        boxes_cxcywh, points, weight_logits, temperature = inputs
        ctx.save_for_backward(boxes_cxcywh, points, weight_logits)
        ctx.temperature = temperature

    def backward(ctx, grad_output):
        need = ctx.needs_input_grad[:3]
        if not any(need):
            return None, None, None, None
        grads = backward_op(grad_output, *ctx.saved_tensors, ctx.temperature)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,)

    return setup_context, backward


def ms_deform_attn(backward_op):
    def setup_context(ctx, inputs, output):
        # The inputs only: the backward re-samples the few value rows each location reads instead of keeping the
        # (B*heads, D, Q, L*P) sampled values the unfused sequence saves.
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output):
        mask = [_will_use_gradient(ctx, i) for i in (0, 3, 4)]  # value, sampling_locations, attention_weights
        if not any(mask):
            return (None,) * 5
        value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
        grads = backward_op(grad_output, value, spatial_shapes, level_start_index, locations, weights, mask)
        grad_value, grad_locations, grad_weights = (g if n else None for g, n in zip(grads, mask))
        return grad_value, None, None, grad_locations, grad_weights

    return setup_context, backward
