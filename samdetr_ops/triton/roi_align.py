"""Triton roi_align: forward (one program per RoI bin, the channels as one vector) and backward (atomic scatter)."""
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
    program_index,
    roi_geometry,
)


@triton.autotune(configs=autotune_configs(2, 4, 8), key=["C"])
@triton.jit
def _roi_align_forward_kernel(feat_ptr, box_ptr, out_ptr, N, C, H, W, sf_b, sf_c, sf_h, sf_w, scale: tl.float64,
                              sampling_ratio, aligned, SH: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr,
                              ACC: tl.constexpr):
    # program = (roi, bin); features read through their strides (channels-last: contiguous channel vectors)
    pid = program_index()
    roi = pid // (SH * SW)
    bin_index = pid % (SH * SW)
    b = roi // N
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count = roi_geometry(
        box_ptr + roi * 4, scale, SH, SW, sampling_ratio, aligned, ACC)
    c = tl.arange(0, BLOCK_C)
    mask = c < C
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    acc = bin_sum(feat_ptr + b * sf_b, sf_h, sf_w, c * sf_c, mask, start_y, start_x, bin_h, bin_w, grid_h, grid_w,
                  bin_index // SW, bin_index % SW, H, W, acc)
    # out (B, N, C, SH, SW) contiguous
    tl.store(out_ptr + roi * C * SH * SW + c * SH * SW + bin_index, (acc * inv_count).to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.autotune(configs=fixed_config(4), key=["C"])  # atomics: never autotuned (see fixed_config)
@triton.jit
def _roi_align_backward_kernel(grad_ptr, box_ptr, gfeat_ptr, N, C, H, W, scale: tl.float64, sampling_ratio, aligned,
                               SH: tl.constexpr, SW: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    # program = (roi, bin); gfeat is a (B, H, W, C) accumulator in ACC
    pid = program_index()
    roi = pid // (SH * SW)
    bin_index = pid % (SH * SW)
    b = roi // N
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count = roi_geometry(
        box_ptr + roi * 4, scale, SH, SW, sampling_ratio, aligned, ACC)
    c = tl.arange(0, BLOCK_C)
    mask = c < C
    g = tl.load(grad_ptr + roi * C * SH * SW + c * SH * SW + bin_index, mask=mask, other=0.0).to(ACC) * inv_count
    bin_scatter(gfeat_ptr + b * H * W * C, W * C, C, c, mask, start_y, start_x, bin_h, bin_w, grid_h, grid_w,
                bin_index // SW, bin_index % SW, H, W, g)


@triton_op("samdetr_ops_triton::roi_align", mutates_args=())
def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: list[int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> torch.Tensor:
    B, C, H, W = features.shape
    N, (SH, SW) = boxes.shape[1], output_size
    out = features.new_zeros((B, N, C, SH, SW))
    if B * N * C * SH * SW == 0 or H == 0 or W == 0:
        return out
    boxes = boxes.contiguous()
    wrap_triton(_roi_align_forward_kernel)[(B * N * SH * SW,)](
        features, boxes, out, N, C, H, W, *features.stride(), spatial_scale, sampling_ratio, aligned, SH=SH, SW=SW,
        BLOCK_C=triton.next_power_of_2(int(C)), ACC=acc_dtype(features.dtype))
    return out


@triton_op("samdetr_ops_triton::roi_align_backward", mutates_args=())
def roi_align_backward(grad_output: torch.Tensor, boxes: torch.Tensor, feature_shape: list[int],
                       output_size: list[int], spatial_scale: float, sampling_ratio: int,
                       aligned: bool) -> torch.Tensor:
    B, C, H, W = feature_shape
    N, (SH, SW) = boxes.shape[1], output_size
    accum = feature_grad_accumulator(feature_shape, grad_output.dtype, grad_output.device)
    if B * N * C * H * W * SH * SW > 0:
        alert_atomic_scatter("roi_align_backward")
        wrap_triton(_roi_align_backward_kernel)[(B * N * SH * SW,)](
            grad_output.contiguous(), boxes.contiguous(), accum, N, C, H, W, spatial_scale, sampling_ratio, aligned,
            SH=SH, SW=SW, BLOCK_C=triton.next_power_of_2(int(C)), ACC=acc_dtype(grad_output.dtype))
    return feature_grad(accum, grad_output.dtype)


_autograd.register(roi_align, roi_align_backward, _autograd.roi_align)
