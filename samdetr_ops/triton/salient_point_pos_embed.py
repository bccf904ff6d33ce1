"""Triton salient_point_pos_embed: one program per point row (b, n, m), its D features as one vector."""
import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .. import _autograd
from ._common import acc_dtype, accumulation_dtype, autotune_configs, float_arg, program_index


@triton.jit
def _embedding(box_ptr, pts_ptr, row, M, half, log2_temperature, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Per feature k < half of the y and x coordinates: (value_y, d value_y / d py, value_x, d value_x / d px),
    and the box/point scalars (w, h, pt_x, pt_y)."""
    box = box_ptr + (row // M) * 4
    cx = tl.load(box).to(ACC)
    cy = tl.load(box + 1).to(ACC)
    w = tl.load(box + 2).to(ACC)
    h = tl.load(box + 3).to(ACC)
    pt_x = tl.load(pts_ptr + row * 2).to(ACC)
    pt_y = tl.load(pts_ptr + row * 2 + 1).to(ACC)
    py = cy + 0.5 * h * pt_y
    px = cx + 0.5 * w * pt_x
    k = tl.arange(0, BLOCK)
    pair = (k // 2).to(ACC)
    frequency = tl.exp2(-(2.0 * pair / half) * float_arg(log2_temperature, ACC))  # 1 / temperature^(2 (k // 2) / half)
    two_pi: tl.constexpr = 6.283185307179586
    ty = (py * two_pi) * frequency
    tx = (px * two_pi) * frequency
    even = (k % 2) == 0
    value_y = tl.where(even, tl.sin(ty), tl.cos(ty))
    value_x = tl.where(even, tl.sin(tx), tl.cos(tx))
    d_y = tl.where(even, tl.cos(ty), -tl.sin(ty)) * two_pi * frequency
    d_x = tl.where(even, tl.cos(tx), -tl.sin(tx)) * two_pi * frequency
    return value_y, d_y, value_x, d_x, w, h, pt_x, pt_y


@triton.autotune(configs=autotune_configs(1, 2, 4), key=["half"])
@triton.jit
def _forward_kernel(box_ptr, pts_ptr, logit_ptr, out_ptr, M, half, log2_temperature: tl.float64,
                    BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_index()
    value_y, _, value_x, _, _, _, _, _ = _embedding(box_ptr, pts_ptr, row, M, half, log2_temperature, BLOCK, ACC)
    k = tl.arange(0, BLOCK)
    mask = k < half
    base = row * 2 * half
    ly = tl.load(logit_ptr + base + k, mask=mask, other=0.0).to(ACC)
    lx = tl.load(logit_ptr + base + half + k, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + base + k, (value_y * tl.sigmoid(ly)).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + base + half + k, (value_x * tl.sigmoid(lx)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=autotune_configs(1, 2, 4), key=["half"])
@triton.jit
def _backward_kernel(grad_ptr, box_ptr, pts_ptr, logit_ptr, gpts_ptr, glogit_ptr, partial_ptr, M, half,
                     log2_temperature: tl.float64, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_index()
    value_y, d_y, value_x, d_x, w, h, pt_x, pt_y = _embedding(box_ptr, pts_ptr, row, M, half, log2_temperature,
                                                              BLOCK, ACC)
    k = tl.arange(0, BLOCK)
    mask = k < half
    base = row * 2 * half
    sy = tl.sigmoid(tl.load(logit_ptr + base + k, mask=mask, other=0.0).to(ACC))
    sx = tl.sigmoid(tl.load(logit_ptr + base + half + k, mask=mask, other=0.0).to(ACC))
    gy = tl.load(grad_ptr + base + k, mask=mask, other=0.0).to(ACC)
    gx = tl.load(grad_ptr + base + half + k, mask=mask, other=0.0).to(ACC)
    tl.store(glogit_ptr + base + k, (gy * value_y * sy * (1.0 - sy)).to(glogit_ptr.dtype.element_ty), mask=mask)
    tl.store(glogit_ptr + base + half + k, (gx * value_x * sx * (1.0 - sx)).to(glogit_ptr.dtype.element_ty),
             mask=mask)
    grad_py = tl.sum(tl.where(mask, gy * sy * d_y, 0.0), axis=0)
    grad_px = tl.sum(tl.where(mask, gx * sx * d_x, 0.0), axis=0)
    tl.store(gpts_ptr + row * 2, (grad_px * 0.5 * w).to(gpts_ptr.dtype.element_ty))
    tl.store(gpts_ptr + row * 2 + 1, (grad_py * 0.5 * h).to(gpts_ptr.dtype.element_ty))
    # this row's share of d loss / d (cx, cy, w, h), summed over the box's M rows afterwards (no atomics)
    tl.store(partial_ptr + row * 4, grad_px)
    tl.store(partial_ptr + row * 4 + 1, grad_py)
    tl.store(partial_ptr + row * 4 + 2, grad_px * 0.5 * pt_x)
    tl.store(partial_ptr + row * 4 + 3, grad_py * 0.5 * pt_y)


@triton_op("samdetr_ops_triton::salient_point_pos_embed", mutates_args=())
def salient_point_pos_embed(boxes_cxcywh: torch.Tensor, points: torch.Tensor, weight_logits: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    out = torch.empty_like(weight_logits, memory_format=torch.contiguous_format)
    half = weight_logits.shape[-1] // 2
    rows = out.numel() // max(2 * half, 1)
    if out.numel() > 0:
        wrap_triton(_forward_kernel)[(rows,)](
            boxes_cxcywh.contiguous(), points.contiguous(), weight_logits.contiguous(), out, points.shape[2], half,
            math.log2(temperature), BLOCK=triton.next_power_of_2(int(half)), ACC=acc_dtype(boxes_cxcywh.dtype))
    return out


@triton_op("samdetr_ops_triton::salient_point_pos_embed_backward", mutates_args=())
def salient_point_pos_embed_backward(grad_output: torch.Tensor, boxes_cxcywh: torch.Tensor, points: torch.Tensor,
                                     weight_logits: torch.Tensor,
                                     temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, M, D = weight_logits.shape
    half = D // 2
    grad_points = points.new_zeros((B, N, M, 2))
    grad_logits = weight_logits.new_zeros((B, N, M, D))
    partials = boxes_cxcywh.new_zeros((B, N, M, 4), dtype=accumulation_dtype(boxes_cxcywh.dtype))
    if B * N * M * D > 0:
        wrap_triton(_backward_kernel)[(B * N * M,)](
            grad_output.contiguous(), boxes_cxcywh.contiguous(), points.contiguous(), weight_logits.contiguous(),
            grad_points, grad_logits, partials, M, half, math.log2(temperature),
            BLOCK=triton.next_power_of_2(int(half)), ACC=acc_dtype(boxes_cxcywh.dtype))
    return partials.sum(2).to(boxes_cxcywh.dtype), grad_points, grad_logits


_autograd.register(salient_point_pos_embed, salient_point_pos_embed_backward, _autograd.salient_point_pos_embed)
