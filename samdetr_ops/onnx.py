"""ONNX export of the samdetr_ops ops as standard ONNX operators.

    onnx_program = samdetr_ops.onnx.export(model, (images,), "model.onnx", dynamic_shapes=..., opset_version=18)
or, with torch.onnx directly:
    torch.onnx.export(model, (images,), dynamo=True, custom_translation_table=samdetr_ops.onnx.translation_table())

Each op (compiled namespace samdetr_ops and Triton namespace samdetr_ops_triton) becomes a small graph of opset
16+ operators that onnxruntime and other runtimes run without a custom-op library:

    roi_align                RoiAlign (coordinate_transformation_mode half_pixel when aligned, output_half_pixel
                             when not; sampling_ratio -1 -> 0, the adaptive count), guarded (see below)
    semantic_align           RoiAlign, then GridSample over the RoI grid (bilinear, zeros padding, align_corners 0;
                             the mode is named "bilinear" up to opset 19 and "linear" from 20), times Sigmoid
    salient_point_pos_embed  Mul/Add for the positions, Div by the frequencies, Sin/Cos, times Sigmoid
    ms_deform_attn           per level (L static, unrolled; H, W and the level's start read from the data): Slice of
                             value, GridSample (as semantic_align's), then times the weights, ReduceSum

Batch size, box count and feature-map size stay dynamic: every shape is read from the inputs with Shape.

Guards. Our ops accept any box, and give zeros for one that reads nothing: a NaN/Inf box, and (aligned=True with
the adaptive sampling count) a box of zero or negative width or height, flipped ones included. onnxruntime's
RoiAlign computes a negative sample count from such a box and fails (integer overflow, then a crash at exit), and
casts NaN positions to int. So the graph replaces every such box by a harmless one before RoiAlign and zeroes its
output after. Flipped boxes that our ops do read (a fixed sampling_ratio: samples laid out backwards, or
aligned=False: the legacy 1-pixel minimum extent) go through unchanged, as onnxruntime reads them the same way.
Likewise GridSample casts point positions to int: non-finite or far-off points (which read nothing in our ops)
are clamped to +-3, a point just as far off the RoI grid, so they still read nothing; ms_deform_attn's sampling
locations likewise (in GridSample's [-1, 1] coordinates of each level's map).
Not guarded: a box far larger than the map costs onnxruntime O(box area) samples (as it costs torchvision); our
kernels visit only the samples on the map and saturate the count at 2**24 per axis.

Requires onnx, onnxscript (and onnxruntime to run the result): `pip install samdetr_ops[onnx]`. The rest of the
package imports without them.
"""
import math
from typing import Sequence

import numpy as np
import torch

try:
    import onnxscript
    from onnxscript import opset18 as op
except ImportError as error:
    raise ImportError(f"samdetr_ops.onnx needs onnx and onnxscript: pip install 'samdetr_ops[onnx]' ({error})") \
        from error

from . import _checks, _extension
from ._registry import OP_SPECS

__all__ = ["translation_table", "export"]

# A point coordinate (x or y in grid_sample's [-1, 1] over the RoI grid) beyond +-3 reads nothing from a grid of
# any size S >= 1: its sample position ((x + 1) * S - 1) / 2 has both neighbours outside [0, S - 1]. Clamping to
# this bound keeps such points reading nothing while keeping GridSample's float->int casts in range.
_POINT_BOUND = 3.0


def _target_opset():
    """The opset the exporter is building (its tracer holds it); 18, torch.onnx's floor, if it cannot be read."""
    tracer = onnxscript.evaluator.default()
    opset = getattr(tracer, "opset", None)
    return getattr(opset, "version", 18)


def _int64(values):
    return op.Constant(value=onnxscript.ir.tensor(np.asarray(values, dtype=np.int64)))


def _dims(x, start, end):
    """x.shape[start:end] as a 1-D int64 tensor (dynamic dimensions included)."""
    return op.Shape(x, start=start, end=end)


def _box_validity(boxes_flat, spatial_scale, sampling_ratio, aligned):
    """boxes_flat (R, 4) x1 y1 x2 y2 -> (R,) bool: whether our kernels read anything from the box (the rule of
    csrc/samdetr_math.h roi_geometry: a non-finite corner or extent reads nothing; with aligned=True and the
    adaptive count, ceil(extent / bins) <= 0 samples does too)."""
    offset = 0.5 if aligned else 0.0
    start = op.Sub(op.Mul(op.Slice(boxes_flat, _int64([0]), _int64([2]), _int64([1])), spatial_scale), offset)
    end = op.Sub(op.Mul(op.Slice(boxes_flat, _int64([2]), _int64([4]), _int64([1])), spatial_scale), offset)
    extent = op.Sub(end, start)                                                         # (R, 2) w, h
    geometry = op.Concat(start, extent, axis=1)                                         # (R, 4)
    conditions = op.Not(op.Or(op.IsNaN(geometry), op.IsInf(geometry)))                 # (R, 4) finite
    if aligned and sampling_ratio <= 0:
        conditions = op.Concat(conditions, op.Greater(extent, op.CastLike(0.0, extent)), axis=1)  # (R, 6)
    # all conditions hold: the minimum over them as 0/1 (ReduceMin takes no bool)
    every = op.ReduceMin(op.Cast(conditions, to=onnxscript.ir.DataType.INT64), _int64([1]), keepdims=0)
    return op.Cast(every, to=onnxscript.ir.DataType.BOOL)                               # (R,)


def _roi_align_flat(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """features (B, C, H, W), boxes (B, N, 4) -> (B*N, C, S_h, S_w), our roi_align's values."""
    pooled_h, pooled_w = _checks.pooled_size("roi_align", output_size)
    boxes_flat = op.Reshape(boxes, _int64([-1, 4]))                                     # (B*N, 4)
    # image index of each box: 0..B-1, each repeated N times
    batch = op.Squeeze(_dims(boxes, 0, 1))
    image_index = op.Range(op.Constant(value_int=0), batch, op.Constant(value_int=1))   # (B,)
    batch_indices = op.Reshape(op.Expand(op.Unsqueeze(image_index, _int64([1])), _dims(boxes, 0, 2)),
                               _int64([-1]))                                            # (B*N,)
    valid = _box_validity(boxes_flat, spatial_scale, sampling_ratio, aligned)          # (B*N,)
    # an invalid box becomes (0, 0, 1, 1): finite, one bin-sized read, and its output is zeroed below
    harmless = op.CastLike(op.Constant(value_floats=[0.0, 0.0, 1.0, 1.0]), boxes_flat)
    safe_boxes = op.Where(op.Unsqueeze(valid, _int64([1])), boxes_flat, harmless)
    rois = op.RoiAlign(features, safe_boxes, batch_indices,
                       coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
                       mode="avg", output_height=pooled_h, output_width=pooled_w,
                       sampling_ratio=max(sampling_ratio, 0), spatial_scale=spatial_scale)  # (B*N, C, S_h, S_w)
    return op.Where(op.Unsqueeze(valid, _int64([1, 2, 3])), rois, op.CastLike(0.0, rois))


# The translation functions take the ops' schemas' arguments and defaults (the exported graph leaves out arguments
# equal to their defaults).
def roi_align(features, boxes, output_size: Sequence[int] = (7, 7), spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = True):
    """samdetr_ops::roi_align: features (B, C, H, W), boxes (B, N, 4) -> (B, N, C, S_h, S_w)."""
    rois = _roi_align_flat(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return op.Reshape(rois, op.Concat(_dims(boxes, 0, 2), _dims(rois, 1, 4), axis=0))


def semantic_align(features, boxes, points, weight_logits, output_size: Sequence[int] = (7, 7),
                   spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True):
    """samdetr_ops::semantic_align: + points (B, N, M, 2), weight_logits (B, N, M, C) -> (B, N, M, C)."""
    rois = _roi_align_flat(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)  # (B*N, C, S_h, S_w)
    bounded = op.Where(op.IsNaN(points), op.CastLike(_POINT_BOUND, points),
                       op.Clip(points, op.CastLike(-_POINT_BOUND, points), op.CastLike(_POINT_BOUND, points)))
    grid = op.Reshape(bounded, op.Concat(_int64([-1, 1]), _dims(points, 2, 4), axis=0))  # (B*N, 1, M, 2)
    mode = "linear" if _target_opset() >= 20 else "bilinear"
    sampled = op.GridSample(rois, grid, align_corners=0, mode=mode, padding_mode="zeros")  # (B*N, C, 1, M)
    sampled = op.Reshape(sampled, op.Concat(_dims(points, 0, 2), _dims(rois, 1, 2), _dims(points, 2, 3), axis=0))
    return op.Mul(op.Transpose(sampled, perm=[0, 1, 3, 2]), op.Sigmoid(weight_logits))  # (B, N, M, C)


def salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature: float = 10000.0):
    """samdetr_ops::salient_point_pos_embed: boxes_cxcywh (B, N, 4), points (B, N, M, 2), weight_logits
    (B, N, M, D) -> (B, N, M, D): sine of y (D/2 features) then of x, sin at even and cos at odd feature index."""
    depth = weight_logits.shape[-1]
    if not isinstance(depth, int):
        raise ValueError("samdetr_ops.onnx: salient_point_pos_embed needs a static embedding size D "
                         f"(the last dimension of weight_logits), got {depth}")
    half = depth // 2
    centre = op.Unsqueeze(op.Slice(boxes_cxcywh, _int64([0]), _int64([2]), _int64([-1])), _int64([2]))  # (B,N,1,2)
    size = op.Unsqueeze(op.Slice(boxes_cxcywh, _int64([2]), _int64([4]), _int64([-1])), _int64([2]))
    position = op.Add(centre, op.Mul(op.Mul(size, 0.5), points))                        # (B, N, M, 2) x, y
    position_yx = op.Gather(position, _int64([1, 0]), axis=3)                           # (B, N, M, 2) y, x
    k = np.arange(half)
    frequency = temperature ** (2 * (k // 2) / half)                                    # (half,) as the reference
    angle = op.Div(op.Unsqueeze(op.Mul(position_yx, 2 * math.pi), _int64([4])),
                   op.CastLike(op.Constant(value_floats=frequency.tolist()), points))    # (B, N, M, 2, half)
    even = op.Constant(value=onnxscript.ir.tensor(k % 2 == 0))
    embedding = op.Reshape(op.Where(even, op.Sin(angle), op.Cos(angle)),
                           op.Concat(_dims(points, 0, 3), _int64([depth]), axis=0))     # (B, N, M, D)
    return op.Mul(embedding, op.Sigmoid(weight_logits))


def _level_map(value, spatial_shapes, level_start_index, level):
    """value (B, S, heads, D) -> level `level`'s map (B*heads, D, H_l, W_l); H_l, W_l and the level's start are
    read from the data (Gather), so they are not baked into the graph."""
    height_width = op.Gather(spatial_shapes, _int64(level), axis=0)                    # (2,) H, W
    start = op.Gather(level_start_index, _int64([level]), axis=0)                      # (1,)
    end = op.Add(start, op.ReduceProd(height_width, keepdims=1))                       # (1,) start + H*W
    value_l = op.Slice(value, start, end, _int64([1]))                                 # (B, H*W, heads, D)
    value_l = op.Transpose(value_l, perm=[0, 2, 3, 1])                                  # (B, heads, D, H*W)
    batch_heads = op.Mul(_dims(value, 0, 1), _dims(value, 2, 3))                        # (1,) B*heads
    # allowzero=1: an empty level (H or W = 0) keeps its 0 instead of copying the input's dimension
    value_l = op.Reshape(value_l, op.Concat(batch_heads, _dims(value, 3, 4), height_width, axis=0), allowzero=1)
    # GridSample refuses an empty map: an empty level (which reads nothing) becomes a map of zeros one pixel high
    # or wide (padded at the end; no padding for the other levels)
    empty = op.Cast(op.Equal(height_width, _int64([0, 0])), to=onnxscript.ir.DataType.INT64)  # (2,) 0/1
    return op.Pad(value_l, op.Concat(_int64([0] * 6), empty, axis=0), op.CastLike(0.0, value_l))


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """samdetr_ops::ms_deform_attn: value (B, S, heads, D), spatial_shapes (L, 2) (H, W), level_start_index (L,),
    sampling_locations (B, Q, heads, L, P, 2) (x, y) in [0, 1], attention_weights (B, Q, heads, L, P)
    -> (B, Q, heads*D). One GridSample per level (L, the number of levels, is static: unrolled here; each level's
    H, W and start are data), times the weights, summed over levels and points."""
    levels = sampling_locations.shape[3]
    if not isinstance(levels, int):
        raise ValueError("samdetr_ops.onnx: ms_deform_attn needs a static number of levels L (dimension 3 of "
                         f"sampling_locations), got {levels}")
    # (x, y) in [0, 1] -> grid_sample's [-1, 1]; NaN, Inf and far-off points (nothing read in our op) clamped to
    # +-3, off any map (see _POINT_BOUND), which keeps GridSample's float->int casts in range
    grid = op.Sub(op.Mul(sampling_locations, op.CastLike(2.0, sampling_locations)),
                  op.CastLike(1.0, sampling_locations))
    bound = op.CastLike(_POINT_BOUND, grid)
    grid = op.Where(op.IsNaN(grid), bound, op.Clip(grid, op.Neg(bound), bound))
    # (B, Q, heads, L, P, 2) -> (B*heads, L, Q, P, 2)
    grid = op.Reshape(op.Transpose(grid, perm=[0, 2, 3, 1, 4, 5]),
                      op.Concat(_int64([-1, levels]), _dims(grid, 1, 2), _dims(grid, 4, 6), axis=0))
    mode = "linear" if _target_opset() >= 20 else "bilinear"
    sampled = []
    for level in range(levels):
        grid_l = op.Gather(grid, _int64(level), axis=1)                                # (B*heads, Q, P, 2)
        value_l = _level_map(value, spatial_shapes, level_start_index, level)         # (B*heads, D, H, W)
        sampled.append(op.GridSample(value_l, grid_l, align_corners=0, mode=mode,
                                     padding_mode="zeros"))                            # (B*heads, D, Q, P)
    sampled = op.Concat(*sampled, axis=3) if levels > 1 else sampled[0]                # (B*heads, D, Q, L*P)
    # (B, Q, heads, L, P) -> (B*heads, 1, Q, L*P)
    weights = op.Reshape(op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4]),
                         op.Concat(_int64([-1, 1]), _dims(attention_weights, 1, 2),
                                   op.Mul(_dims(attention_weights, 3, 4), _dims(attention_weights, 4, 5)), axis=0))
    out = op.ReduceSum(op.Mul(sampled, weights), _int64([3]), keepdims=0)             # (B*heads, D, Q)
    # (B*heads, D, Q) -> (B, heads*D, Q) -> (B, Q, heads*D)
    out = op.Reshape(out, op.Concat(_dims(value, 0, 1), _int64([-1]), _dims(sampling_locations, 1, 2), axis=0))
    return op.Transpose(out, perm=[0, 2, 1])


def translation_table():
    """{op overload: onnxscript function} for torch.onnx.export(..., dynamo=True, custom_translation_table=...):
    the forward ops of the compiled namespace (samdetr_ops, when the extension is built) and of the Triton one
    (samdetr_ops_triton, when Triton imports), each mapped to the function of this module its OpSpec's
    `onnx_translation` names. Without the extension the ops run the reference sequence (torchvision's roi_align,
    grid_sample), which torch.onnx translates by itself."""
    namespaces = []
    if _extension.LOADED:
        namespaces.append(torch.ops.samdetr_ops)
    try:
        from . import triton  # noqa: F401  (registers torch.ops.samdetr_ops_triton)

        namespaces.append(torch.ops.samdetr_ops_triton)
    except ImportError:
        pass
    return {getattr(namespace, name).default: globals()[spec.onnx_translation]
            for namespace in namespaces for name, spec in OP_SPECS.items() if spec.onnx_translation}


def export(model, args, f=None, **kwargs):
    """torch.onnx.export(model, args, f, dynamo=True, **kwargs) with our translation table merged into any
    `custom_translation_table` the caller gives (the caller's entries win). Returns the ONNXProgram."""
    if not kwargs.pop("dynamo", True):
        raise ValueError("samdetr_ops.onnx.export: the translation table needs the dynamo exporter (dynamo=True)")
    table = {**translation_table(), **(kwargs.pop("custom_translation_table", None) or {})}
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
