"""Triton ms_deform_attn: one program per (batch, query, head) with its D channels as one vector, looping over the
L levels and P points. The backward reduces the location and weight gradients over the channels in the program
(one store per sample) and scatters the value gradient with atomics."""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import _autograd
from ._common import alert_atomic_scatter, autotune_configs, fixed_config, grid_corner, program_index
from .roi_align import acc_dtype


@triton.jit
def _level(shapes_ptr, starts_ptr, level):
    """(H, W, first row) of a level, as int64."""
    return tl.load(shapes_ptr + 2 * level), tl.load(shapes_ptr + 2 * level + 1), tl.load(starts_ptr + level)


@triton.jit
def _corner(x, y, H, W, kx: tl.constexpr, ky: tl.constexpr, ACC: tl.constexpr):
    """Corner (x0 + kx, y0 + ky) of location (x, y) in [0, 1] of an H x W map, sampled at (x W - 0.5, y H - 0.5):
    _common.grid_corner at the grid coordinate (2 x - 1, 2 y - 1), as grid_sample (align_corners=False) and
    csrc/samdetr_math.h's level_corners compute it. Returns (row index in the level (clamped into it), whether the
    corner contributes (on the map, with a non-zero weight or derivative), weight, d weight / d x, d weight / d y);
    NaN/Inf locations are on no map."""
    cx, cy, w, w_dpx, w_dpy = grid_corner(2.0 * x - 1.0, 2.0 * y - 1.0, H.to(ACC), W.to(ACC), kx, ky)
    index = cy.to(tl.int64) * W + cx.to(tl.int64)
    contributes = (w != 0.0) | (w_dpx != 0.0) | (w_dpy != 0.0)
    return index, contributes, w, 2.0 * w_dpx, 2.0 * w_dpy  # d (2 x - 1) / d x = 2


@triton.autotune(configs=autotune_configs(1, 2, 4), key=["D"])
@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, out_ptr, Q, S, heads, D,
                    L: tl.constexpr, P: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    item = program_index()  # (b, q, h)
    b = item // (Q * heads)
    h = item % heads
    c = tl.arange(0, BLOCK_D)
    c_mask = c < D
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for level in tl.static_range(L):
        H, W, start = _level(shapes_ptr, starts_ptr, level)
        rows = value_ptr + ((b * S + start) * heads + h) * D + c  # the level's row 0 of head h
        for p in tl.static_range(P):
            sample = item * (L * P) + level * P + p
            x = tl.load(loc_ptr + 2 * sample).to(ACC)
            y = tl.load(loc_ptr + 2 * sample + 1).to(ACC)
            weight = tl.load(weight_ptr + sample).to(ACC)
            for ky in tl.static_range(2):
                for kx in tl.static_range(2):
                    index, inside, w, _, _ = _corner(x, y, H, W, kx, ky, ACC)
                    # the channels to read: all D on the map, none off it (the interpreter cannot `&` a scalar mask)
                    mask = c < tl.where(inside, D, 0)
                    v = tl.load(rows + index * (heads * D), mask=mask, other=0.0).to(ACC)
                    acc += (weight * w) * v
    tl.store(out_ptr + item * D + c, acc.to(out_ptr.dtype.element_ty), mask=c_mask)


@triton.autotune(configs=fixed_config(2), key=["D"])  # atomics: never autotuned (see fixed_config)
@triton.jit
def _backward_kernel(grad_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, gvalue_ptr, gloc_ptr,
                     gweight_ptr, Q, S, heads, D, L: tl.constexpr, P: tl.constexpr, NEED_VALUE: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # gvalue: a (B, S, heads, D) accumulator in ACC; gloc, gweight: written once per sample
    item = program_index()  # (b, q, h)
    b = item // (Q * heads)
    h = item % heads
    c = tl.arange(0, BLOCK_D)
    c_mask = c < D
    g = tl.load(grad_ptr + item * D + c, mask=c_mask, other=0.0).to(ACC)
    for level in tl.static_range(L):
        H, W, start = _level(shapes_ptr, starts_ptr, level)
        row0 = ((b * S + start) * heads + h) * D + c
        for p in tl.static_range(P):
            sample = item * (L * P) + level * P + p
            x = tl.load(loc_ptr + 2 * sample).to(ACC)
            y = tl.load(loc_ptr + 2 * sample + 1).to(ACC)
            weight = tl.load(weight_ptr + sample).to(ACC)
            sampled = tl.zeros([BLOCK_D], dtype=ACC)
            d_x = tl.zeros([BLOCK_D], dtype=ACC)
            d_y = tl.zeros([BLOCK_D], dtype=ACC)
            for ky in tl.static_range(2):
                for kx in tl.static_range(2):
                    index, inside, w, w_dx, w_dy = _corner(x, y, H, W, kx, ky, ACC)
                    mask = c < tl.where(inside, D, 0)
                    v = tl.load(value_ptr + row0 + index * (heads * D), mask=mask, other=0.0).to(ACC)
                    sampled += w * v
                    d_x += w_dx * v
                    d_y += w_dy * v
                    if NEED_VALUE:
                        tl.atomic_add(gvalue_ptr + row0 + index * (heads * D), (weight * w) * g, mask=mask,
                                      sem="relaxed")
            tl.store(gweight_ptr + sample, tl.sum(g * sampled, 0).to(gweight_ptr.dtype.element_ty))
            tl.store(gloc_ptr + 2 * sample, (weight * tl.sum(g * d_x, 0)).to(gloc_ptr.dtype.element_ty))
            tl.store(gloc_ptr + 2 * sample + 1, (weight * tl.sum(g * d_y, 0)).to(gloc_ptr.dtype.element_ty))


def _sizes(value, sampling_locations):
    B, S, heads, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    return B, S, heads, D, Q, L, P


@triton_op("samdetr_ops_triton::ms_deform_attn", mutates_args=())
def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    B, S, heads, D, Q, L, P = _sizes(value, sampling_locations)
    out = value.new_zeros((B, Q, heads * D))
    if out.numel() == 0 or L * P == 0:
        return out
    wrap_triton(_forward_kernel)[(B * Q * heads,)](
        value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
        sampling_locations.contiguous(), attention_weights.contiguous(), out, Q, S, heads, D, L=L, P=P,
        BLOCK_D=triton.next_power_of_2(int(D)), ACC=acc_dtype(value.dtype))
    return out


@triton_op("samdetr_ops_triton::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor,
                            output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, S, heads, D, Q, L, P = _sizes(value, sampling_locations)
    accum = torch.zeros(value.shape, dtype=torch.float64 if value.dtype == torch.float64 else torch.float32,
                        device=value.device)
    grad_locations = torch.zeros_like(sampling_locations, memory_format=torch.contiguous_format)
    grad_weights = torch.zeros_like(attention_weights, memory_format=torch.contiguous_format)
    if grad_output.numel() > 0 and L * P > 0 and any(output_mask):
        if output_mask[0]:
            alert_atomic_scatter("ms_deform_attn_backward")
        wrap_triton(_backward_kernel)[(B * Q * heads,)](
            grad_output.contiguous(), value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous(), accum, grad_locations, grad_weights, Q,
            S, heads, D, L=L, P=P, NEED_VALUE=bool(output_mask[0]), BLOCK_D=triton.next_power_of_2(int(D)),
            ACC=acc_dtype(value.dtype))
    return accum.to(value.dtype), grad_locations, grad_weights


_autograd.register(ms_deform_attn, ms_deform_attn_backward, _autograd.ms_deform_attn)
