"""Triton device functions shared by the three ops: the same RoIAlign / grid_sample / sine rules as
csrc/samdetr_math.h (which the C++ and CUDA kernels share), written for Triton. Branch-free: off-map samples and
off-grid corners get weight 0 and clamped (always in-bounds) indices.

Rules every kernel here follows, each checked by tests/test_triton_compile.py (which compiles every kernel for
sm_80/sm_90 without a GPU, since the interpreter never compiles anything):
- module-level numbers read inside @triton.jit code are tl.constexpr (Triton refuses plain globals on a GPU);
- float scalar arguments are annotated tl.float64: Triton passes an unannotated Python float as a 32-bit float,
  which would cost float64 inputs their precision (spatial_scale = 1/3, log2(temperature));
- a kernel that scatters with atomics has one fixed config (see fixed_config);
- program ids are widened to int64 before they are multiplied into an offset (B*N*C*S*S can pass 2**31).

Autotuned kernels benchmark their configs on the first call for each new key (channel count, dtype), which
synchronises the device: warm up (one call per shape) before capturing a CUDA graph."""
import os
import warnings

import torch
import triton
import triton.language as tl

# Read once, here, for the whole backend (triton.jit reads it likewise as each kernel is decorated, at import: a
# later change of the variable would not change how the kernels run).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_SAMPLES_PER_AXIS: tl.constexpr = tl.constexpr(1 << 24)  # as kMaxSamplesPerAxis in csrc/samdetr_math.h


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The op-math type every kernel accumulates in, as the C++ kernels' opmath_t: float64 stays, every other dtype
    (float32, float16, bfloat16) accumulates in float32. Also the dtype of the backward's accumulation buffers."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """accumulation_dtype as the Triton dtype the kernels take as their ACC constexpr."""
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


def autotune_configs(*warps):
    """A few num_warps candidates on a GPU; one config under the interpreter (autotuning there only costs)."""
    return [triton.Config({}, num_warps=w) for w in (warps[:1] if INTERPRET else warps)]


def fixed_config(warps):
    """The one config of a kernel that accumulates with atomics. Autotuning runs every candidate config into the
    same output on the first call for a shape, which would multiply an atomically accumulated gradient (and
    benchmarking synchronises, so a first call could not be captured in a CUDA graph); one config is never
    benchmarked."""
    return [triton.Config({}, num_warps=warps)]


def alert_atomic_scatter(op):
    """As the CUDA kernels do (at::globalContext().alertNotDeterministic): under
    torch.use_deterministic_algorithms(True) an atomically scattered gradient raises, or warns with
    warn_only=True. Called by the launcher of every backward that scatters with atomics."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (f"samdetr_ops.{op} (Triton): the feature gradient is accumulated with atomic adds, so its last bits "
               "vary between runs on a GPU. Use the 'cpp' backend on CPU for bit-identical results, or call "
               "torch.use_deterministic_algorithms(True, warn_only=True) to accept it")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(message)


def feature_grad_accumulator(feature_shape, dtype, device):
    """The (B, H, W, C) zeros a backward kernel scatters the feature gradient into, in accumulation_dtype."""
    B, C, H, W = feature_shape
    return torch.zeros((B, H, W, C), dtype=accumulation_dtype(dtype), device=device)


def feature_grad(accum, dtype):
    """The (B, C, H, W) channels-last gradient in `dtype` from feature_grad_accumulator's buffer."""
    return accum.permute(0, 3, 1, 2).to(dtype)


@triton.jit
def program_index():
    """This program's index along the grid, as int64: every offset computed from it is then 64-bit (the grid is
    B*N*S_h*S_w or B*N*M programs, times C channels an offset can pass 2**31 while each factor is small)."""
    return tl.program_id(0).to(tl.int64)


@triton.jit
def float_arg(x, ACC: tl.constexpr):
    """A tl.float64-annotated scalar argument in ACC. (Not x.to(ACC): under the interpreter x is a Python float.)"""
    return tl.full((), x, ACC)


@triton.jit
def _is_finite(x):
    return (x == x) & (tl.abs(x) < float("inf"))


@triton.jit
def roi_geometry(box_ptr, scale, SH, SW, sampling_ratio, aligned, ACC: tl.constexpr):
    """(start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count) of the box at box_ptr (x1, y1, x2, y2) pooled
    to SH x SW bins, computed in ACC (float32, or float64 for float64 inputs; scale arrives as float64)."""
    scale = float_arg(scale, ACC)
    x1 = tl.load(box_ptr + 0).to(ACC)
    y1 = tl.load(box_ptr + 1).to(ACC)
    x2 = tl.load(box_ptr + 2).to(ACC)
    y2 = tl.load(box_ptr + 3).to(ACC)
    offset = tl.where(aligned, 0.5, 0.0)
    start_x = x1 * scale - offset
    start_y = y1 * scale - offset
    roi_w = x2 * scale - offset - start_x
    roi_h = y2 * scale - offset - start_y
    # tested before the legacy clamp below, which would turn a NaN extent into 1 (on a GPU max(NaN, 1) is 1)
    finite = _is_finite(start_x) & _is_finite(start_y) & _is_finite(roi_w) & _is_finite(roi_h)
    roi_w = tl.where(aligned, roi_w, tl.maximum(roi_w, 1.0))
    roi_h = tl.where(aligned, roi_h, tl.maximum(roi_h, 1.0))
    bin_h = roi_h / SH
    bin_w = roi_w / SW
    adaptive_h = tl.minimum(tl.where(tl.ceil(roi_h / SH) > 0, tl.ceil(roi_h / SH), 0.0), MAX_SAMPLES_PER_AXIS)
    adaptive_w = tl.minimum(tl.where(tl.ceil(roi_w / SW) > 0, tl.ceil(roi_w / SW), 0.0), MAX_SAMPLES_PER_AXIS)
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_h.to(tl.int32))
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_w.to(tl.int32))
    grid_h = tl.where(finite, grid_h, 0)
    grid_w = tl.where(finite, grid_w, 0)
    inv_count = 1.0 / tl.maximum(grid_h.to(tl.int64) * grid_w.to(tl.int64), 1).to(ACC)
    return start_y, start_x, bin_h, bin_w, grid_h, grid_w, inv_count


@triton.jit
def sample_position(start, bin_index, bin_size, i, grid):
    return start + bin_index * bin_size + (i + 0.5) * bin_size / grid


@triton.jit
def sample_range(start, bin_index, bin_size, grid, size):
    """[first, last) of the sample indices that can land on the map (-1 <= pos <= size), widened by a sample on
    each side against rounding; every sample is still tested. Bounds the work of huge boxes to O(map size)."""
    g = grid.to(start.dtype)
    safe = tl.where(bin_size > 0, bin_size, 1.0)
    lo = tl.floor((-1.0 - start - bin_index * bin_size) * g / safe - 0.5) - 1.0
    hi = tl.ceil((size - start - bin_index * bin_size) * g / safe - 0.5) + 2.0
    lo = tl.minimum(tl.maximum(lo, 0.0), g)
    hi = tl.minimum(tl.maximum(hi, 0.0), g)
    use = (bin_size > 0) & (grid > 2)
    first = tl.where(use, lo.to(tl.int32), 0)
    last = tl.where(use, hi.to(tl.int32), grid)
    return first, tl.maximum(last, first)


@triton.jit
def axis_taps(pos, size):
    """torchvision's bilinear rule on one axis: (lo, hi, w_lo, w_hi), weights 0 when off the map."""
    on_map = (pos >= -1.0) & (pos <= size)
    p = tl.where(on_map, tl.maximum(pos, 0.0), 0.0)
    lo = p.to(tl.int32)
    clamp = lo >= size - 1
    lo = tl.where(clamp, size - 1, lo)
    hi = tl.where(clamp, size - 1, lo + 1)
    p = tl.where(clamp, lo.to(p.dtype), p)
    w_hi = p - lo.to(p.dtype)
    w_lo = 1.0 - w_hi
    return lo, hi, tl.where(on_map, w_lo, 0.0), tl.where(on_map, w_hi, 0.0)


@triton.jit
def bin_sum(feat_ptr, stride_h, stride_w, c_offsets, c_mask, start_y, start_x, bin_h, bin_w, grid_h, grid_w,
            bin_y, bin_x, H, W, acc):
    """acc + the sum over the bin's bilinear samples of the features (one vector of channels); divide by the
    sample count for the average."""
    iy0, iy1 = sample_range(start_y, bin_y, bin_h, grid_h, H)
    ix0, ix1 = sample_range(start_x, bin_x, bin_w, grid_w, W)
    for iy in range(iy0, iy1):
        y_lo, y_hi, wy_lo, wy_hi = axis_taps(sample_position(start_y, bin_y, bin_h, iy, grid_h), H)
        row_lo = feat_ptr + y_lo.to(tl.int64) * stride_h  # 64-bit: a map may pass 2**31 elements
        row_hi = feat_ptr + y_hi.to(tl.int64) * stride_h
        for ix in range(ix0, ix1):
            x_lo, x_hi, wx_lo, wx_hi = axis_taps(sample_position(start_x, bin_x, bin_w, ix, grid_w), W)
            col_lo = x_lo.to(tl.int64) * stride_w + c_offsets
            col_hi = x_hi.to(tl.int64) * stride_w + c_offsets
            v00 = tl.load(row_lo + col_lo, mask=c_mask, other=0.0)
            v01 = tl.load(row_lo + col_hi, mask=c_mask, other=0.0)
            v10 = tl.load(row_hi + col_lo, mask=c_mask, other=0.0)
            v11 = tl.load(row_hi + col_hi, mask=c_mask, other=0.0)
            acc += (wy_lo * wx_lo) * v00.to(acc.dtype) + (wy_lo * wx_hi) * v01.to(acc.dtype) + \
                (wy_hi * wx_lo) * v10.to(acc.dtype) + (wy_hi * wx_hi) * v11.to(acc.dtype)
    return acc


@triton.jit
def bin_scatter(grad_ptr, stride_h, stride_w, c_offsets, c_mask, start_y, start_x, bin_h, bin_w, grid_h, grid_w,
                bin_y, bin_x, H, W, grad_bin):
    """The adjoint of bin_sum: atomically adds grad_bin (already divided by the count) over the bin's samples.
    Relaxed atomics, as atomicAdd in the CUDA kernels: only the sum matters, not its order against other memory."""
    iy0, iy1 = sample_range(start_y, bin_y, bin_h, grid_h, H)
    ix0, ix1 = sample_range(start_x, bin_x, bin_w, grid_w, W)
    for iy in range(iy0, iy1):
        y_lo, y_hi, wy_lo, wy_hi = axis_taps(sample_position(start_y, bin_y, bin_h, iy, grid_h), H)
        row_lo = grad_ptr + y_lo.to(tl.int64) * stride_h
        row_hi = grad_ptr + y_hi.to(tl.int64) * stride_h
        for ix in range(ix0, ix1):
            x_lo, x_hi, wx_lo, wx_hi = axis_taps(sample_position(start_x, bin_x, bin_w, ix, grid_w), W)
            col_lo = x_lo.to(tl.int64) * stride_w + c_offsets
            col_hi = x_hi.to(tl.int64) * stride_w + c_offsets
            tl.atomic_add(row_lo + col_lo, (wy_lo * wx_lo) * grad_bin, mask=c_mask, sem="relaxed")
            tl.atomic_add(row_lo + col_hi, (wy_lo * wx_hi) * grad_bin, mask=c_mask, sem="relaxed")
            tl.atomic_add(row_hi + col_lo, (wy_hi * wx_lo) * grad_bin, mask=c_mask, sem="relaxed")
            tl.atomic_add(row_hi + col_hi, (wy_hi * wx_hi) * grad_bin, mask=c_mask, sem="relaxed")


@triton.jit
def grid_corner(px, py, SH, SW, kx: tl.constexpr, ky: tl.constexpr):
    """Corner (x0 + kx, y0 + ky) of grid_sample's bilinear taps over the SH x SW grid (align_corners=False, zero
    padding): (bin_x, bin_y clamped into the grid, weight (0 off the grid or for NaN points), d weight / d px,
    d weight / d py)."""
    ix = ((px + 1.0) * SW - 1.0) / 2.0
    iy = ((py + 1.0) * SH - 1.0) / 2.0
    near = (ix > -2.0) & (ix < SW + 1.0) & (iy > -2.0) & (iy < SH + 1.0)
    ix = tl.where(near, ix, 0.0)
    iy = tl.where(near, iy, 0.0)
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    ax = ix - fx
    ay = iy - fy
    bx = fx.to(tl.int32) + kx
    by = fy.to(tl.int32) + ky
    inside = near & (bx >= 0) & (bx < SW) & (by >= 0) & (by < SH)
    wx = ax if kx == 1 else 1.0 - ax
    wy = ay if ky == 1 else 1.0 - ay
    dwx = SW / 2.0 if kx == 1 else -SW / 2.0
    dwy = SH / 2.0 if ky == 1 else -SH / 2.0
    zero = tl.zeros_like(wx)
    return (tl.minimum(tl.maximum(bx, 0), SW - 1), tl.minimum(tl.maximum(by, 0), SH - 1),
            tl.where(inside, wx * wy, zero), tl.where(inside, dwx * wy, zero), tl.where(inside, wx * dwy, zero))
