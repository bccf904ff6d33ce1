"""The op registry: what the package, its tests and its benchmarks know about each op, in one place.

Each OpSpec names the op's public function, reference (the specification), argument checks, fake kernels,
autograd formula, Triton module and ONNX translation. samdetr_ops._extension registers the compiled op from it,
samdetr_ops._backend dispatches through it, samdetr_ops.onnx translates through it, the tests and benchmarks iterate
over OP_SPECS. Adding an op: README, "Adding an op".
"""
import dataclasses
from typing import Callable, Optional

import torch

from . import _autograd, _checks, reference


@dataclasses.dataclass
class OpSpec:
    name: str
    tensor_args: tuple            # names of the tensor arguments, in call order (the rest are scalars)
    differentiable: tuple         # the tensor arguments the op has gradients for
    reference: Callable           # the unfused sequence (samdetr_ops.reference): the specification and fallback
    check: Callable               # raises on bad public arguments; the op's signature (samdetr_ops._checks)
    fake: Callable                # forward on fake tensors: the output's shape, dtype and layout
    backward_fake: Callable       # the backward op's likewise
    autograd: Callable            # backward_op -> (setup_context, backward) (samdetr_ops._autograd)
    triton_module: str            # samdetr_ops.triton.<module> defines a triton_op named like the op
    onnx_translation: Optional[str]  # samdetr_ops.onnx.<function>: the onnxscript translation of the forward op
                                  # into standard ONNX operators (named, not imported: onnxscript is an optional
                                  # extra); None while an op has none (translation_table() leaves it out)
    public: Optional[Callable] = None  # the function samdetr_ops exports (set by `public` below)


def _contiguous_empty_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _channels_last_empty(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


# ---- fake kernels: shapes only, after the same checks as the public functions --------------------------------
def _roi_align_fake(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    pooled_h, pooled_w = _checks.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    B, N = boxes.shape[:2]
    return features.new_empty((B, N, features.shape[1], pooled_h, pooled_w))


def _roi_align_backward_fake(grad_output, boxes, feature_shape, output_size, spatial_scale, sampling_ratio, aligned):
    return _channels_last_empty(feature_shape, grad_output)


def _semantic_align_fake(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True):
    _checks.semantic_align(features, boxes, points, weight_logits, output_size, spatial_scale, sampling_ratio,
                           aligned)
    return _contiguous_empty_like(weight_logits)


def _semantic_align_backward_fake(grad_output, features, boxes, points, weight_logits, output_size, spatial_scale,
                                  sampling_ratio, aligned, output_mask):
    return (_channels_last_empty(features.shape, features), _contiguous_empty_like(points),
            _contiguous_empty_like(weight_logits))


def _pos_embed_fake(boxes_cxcywh, points, weight_logits, temperature=10000.0):
    _checks.salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature)
    return _contiguous_empty_like(weight_logits)


def _pos_embed_backward_fake(grad_output, boxes_cxcywh, points, weight_logits, temperature):
    return tuple(_contiguous_empty_like(t) for t in (boxes_cxcywh, points, weight_logits))


def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _checks.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    B, _, heads, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], heads * D))


def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, output_mask):
    return tuple(_contiguous_empty_like(t) for t in (value, sampling_locations, attention_weights))


OP_SPECS = {spec.name: spec for spec in (
    OpSpec(name="roi_align", tensor_args=("features", "boxes"), differentiable=("features",),
           reference=reference.roi_align, check=_checks.roi_align, fake=_roi_align_fake,
           backward_fake=_roi_align_backward_fake, autograd=_autograd.roi_align,
           triton_module="roi_align", onnx_translation="roi_align"),
    OpSpec(name="semantic_align", tensor_args=("features", "boxes", "points", "weight_logits"),
           differentiable=("features", "points", "weight_logits"), reference=reference.semantic_align,
           check=_checks.semantic_align, fake=_semantic_align_fake, backward_fake=_semantic_align_backward_fake,
           autograd=_autograd.semantic_align,
           triton_module="semantic_align", onnx_translation="semantic_align"),
    OpSpec(name="salient_point_pos_embed", tensor_args=("boxes_cxcywh", "points", "weight_logits"),
           differentiable=("boxes_cxcywh", "points", "weight_logits"), reference=reference.salient_point_pos_embed,
           check=_checks.salient_point_pos_embed, fake=_pos_embed_fake, backward_fake=_pos_embed_backward_fake,
           autograd=_autograd.salient_point_pos_embed,
           triton_module="salient_point_pos_embed", onnx_translation="salient_point_pos_embed"),
    OpSpec(name="ms_deform_attn",
           tensor_args=("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"),
           differentiable=("value", "sampling_locations", "attention_weights"), reference=reference.ms_deform_attn,
           check=_checks.ms_deform_attn, fake=_ms_deform_attn_fake, backward_fake=_ms_deform_attn_backward_fake,
           autograd=_autograd.ms_deform_attn, triton_module="ms_deform_attn",
           onnx_translation="ms_deform_attn"),
)}


def public(fn):
    """Marks `fn` as the public function of the registered op of the same name."""
    OP_SPECS[fn.__name__].public = fn
    return fn
