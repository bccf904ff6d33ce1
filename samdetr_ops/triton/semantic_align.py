"""Triton semantic_align: one program per salient point (RoI, m) with its C channels as one vector; the (at most
4) RoI bins under the point are averaged on the fly. The backward computes only the gradients asked for
(output_mask): it reduces the point gradient over channels in the program (one store per point) and scatters the
feature gradient with atomics."""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import _autograd
from ._common import (
    acc_dtype,
    alert_atomic_scatter,
    autotune_configs,
    bin_scatter,
    bin_sum,
    feature_grad,
    feature_grad_accumulator,
    fixed_config,
    grid_corner,
    program_index,
    roi_geometry,
)


@triton.jit
def _corner_value(feat_ptr, sf_h, sf_w, c_offsets, mask, geometry, bin_x, bin_y, H, W, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr):
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count = geometry
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    acc = bin_sum(feat_ptr, sf_h, sf_w, c_offsets, mask, start_y, start_x, bin_h, bin_w, grid_h, grid_w, bin_y,
                  bin_x, H, W, acc)
    return acc * inv_count


@triton.autotune(configs=autotune_configs(2, 4, 8), key=["C"])
@triton.jit
def _forward_kernel(feat_ptr, box_ptr, pts_ptr, logit_ptr, out_ptr, N, M, C, H, W, sf_b, sf_c, sf_h, sf_w,
                    scale: tl.float64, sampling_ratio, aligned, SH: tl.constexpr, SW: tl.constexpr,
                    BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    item = program_index()  # (roi, m)
    roi = item // M
    b = roi // N
    geometry = roi_geometry(box_ptr + roi * 4, scale, SH, SW, sampling_ratio, aligned, ACC)
    px = tl.load(pts_ptr + item * 2).to(ACC)
    py = tl.load(pts_ptr + item * 2 + 1).to(ACC)
    c = tl.arange(0, BLOCK_C)
    mask = c < C
    feat = feat_ptr + b * sf_b
    q = tl.zeros([BLOCK_C], dtype=ACC)
    for ky in tl.static_range(2):
        for kx in tl.static_range(2):
            bx, by, w, _, _ = grid_corner(px, py, SH, SW, kx, ky)
            if w != 0:
                q += w * _corner_value(feat, sf_h, sf_w, c * sf_c, mask, geometry, bx, by, H, W, BLOCK_C, ACC)
    logit = tl.load(logit_ptr + item * C + c, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + item * C + c, (q * tl.sigmoid(logit)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=fixed_config(4), key=["C"])  # atomics: never autotuned (see fixed_config)
@triton.jit
def _backward_kernel(grad_ptr, feat_ptr, box_ptr, pts_ptr, logit_ptr, gfeat_ptr, gpts_ptr, glogit_ptr, N, M, C, H,
                     W, sf_b, sf_c, sf_h, sf_w, scale: tl.float64, sampling_ratio, aligned, need_features,
                     need_points, need_logits, SH: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr):
    item = program_index()  # (roi, m); gfeat is a (B, H, W, C) accumulator in ACC
    roi = item // M
    b = roi // N
    geometry = roi_geometry(box_ptr + roi * 4, scale, SH, SW, sampling_ratio, aligned, ACC)
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count = geometry
    px = tl.load(pts_ptr + item * 2).to(ACC)
    py = tl.load(pts_ptr + item * 2 + 1).to(ACC)
    c = tl.arange(0, BLOCK_C)
    mask = c < C
    go = tl.load(grad_ptr + item * C + c, mask=mask, other=0.0).to(ACC)
    s = tl.sigmoid(tl.load(logit_ptr + item * C + c, mask=mask, other=0.0).to(ACC))
    gq = go * s  # d loss / d q
    feat = feat_ptr + b * sf_b
    need_values = need_points | need_logits  # the sampled values q and their point derivatives
    q = tl.zeros([BLOCK_C], dtype=ACC)
    dq_dx = tl.zeros([BLOCK_C], dtype=ACC)
    dq_dy = tl.zeros([BLOCK_C], dtype=ACC)
    for ky in tl.static_range(2):
        for kx in tl.static_range(2):
            bx, by, w, w_dx, w_dy = grid_corner(px, py, SH, SW, kx, ky)
            if (w_dx != 0) | (w_dy != 0):  # the corner is on the grid (its weight itself may be 0)
                if need_values:
                    v = _corner_value(feat, sf_h, sf_w, c * sf_c, mask, geometry, bx, by, H, W, BLOCK_C, ACC)
                    q += w * v
                    dq_dx += w_dx * v
                    dq_dy += w_dy * v
                if need_features:
                    bin_scatter(gfeat_ptr + b * H * W * C, W * C, C, c, mask, start_y, start_x, bin_h, bin_w,
                                grid_h, grid_w, by, bx, H, W, w * gq * inv_count)
    if need_logits:
        tl.store(glogit_ptr + item * C + c, (go * q * s * (1.0 - s)).to(glogit_ptr.dtype.element_ty), mask=mask)
    if need_points:
        tl.store(gpts_ptr + item * 2, tl.sum(gq * dq_dx, axis=0).to(gpts_ptr.dtype.element_ty))
        tl.store(gpts_ptr + item * 2 + 1, tl.sum(gq * dq_dy, axis=0).to(gpts_ptr.dtype.element_ty))


@triton_op("samdetr_ops_triton::semantic_align", mutates_args=())
def semantic_align(features: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, weight_logits: torch.Tensor,
                   output_size: list[int], spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    B, C, H, W = features.shape
    N, M = points.shape[1], points.shape[2]
    out = weight_logits.new_zeros((B, N, M, C))
    if B * N * M * C == 0 or H == 0 or W == 0:
        return out
    wrap_triton(_forward_kernel)[(B * N * M,)](
        features, boxes.contiguous(), points.contiguous(), weight_logits.contiguous(), out, N, M, C, H, W,
        *features.stride(), spatial_scale, sampling_ratio, aligned, SH=output_size[0], SW=output_size[1],
        BLOCK_C=triton.next_power_of_2(int(C)), ACC=acc_dtype(features.dtype))
    return out


@triton_op("samdetr_ops_triton::semantic_align_backward", mutates_args=())
def semantic_align_backward(grad_output: torch.Tensor, features: torch.Tensor, boxes: torch.Tensor,
                            points: torch.Tensor, weight_logits: torch.Tensor, output_size: list[int],
                            spatial_scale: float, sampling_ratio: int, aligned: bool,
                            output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, C, H, W = features.shape
    N, M = points.shape[1], points.shape[2]
    need_features, need_points, need_logits = (bool(n) for n in output_mask)
    accum = feature_grad_accumulator(features.shape, features.dtype, features.device)
    # zeros, as the compiled op returns: the gradients not asked for are not computed
    grad_points = points.new_zeros((B, N, M, 2))
    grad_logits = weight_logits.new_zeros((B, N, M, C))
    if B * N * M * C > 0 and H > 0 and W > 0 and (need_features or need_points or need_logits):
        if need_features:
            alert_atomic_scatter("semantic_align_backward")
        wrap_triton(_backward_kernel)[(B * N * M,)](
            grad_output.contiguous(), features, boxes.contiguous(), points.contiguous(), weight_logits.contiguous(),
            accum, grad_points, grad_logits, N, M, C, H, W, *features.stride(), spatial_scale, sampling_ratio,
            aligned, need_features, need_points, need_logits, SH=output_size[0], SW=output_size[1],
            BLOCK_C=triton.next_power_of_2(int(C)),
            ACC=acc_dtype(features.dtype))
    return feature_grad(accum, features.dtype), grad_points, grad_logits


_autograd.register(semantic_align, semantic_align_backward, _autograd.semantic_align)
