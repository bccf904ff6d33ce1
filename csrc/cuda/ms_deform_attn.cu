// CUDA kernels of samdetr_ops::ms_deform_attn: float32, float64, float16, bfloat16 (locations, weights and sums in
// float32 for the last two), any batch size in one launch (no im2col_step).
//
// Items are (batch, query, head); `lanes` threads share an item's D channels, each moving VEC contiguous channels
// at a time. The level sizes are read on the device: checking them against value's S rows on the host would cost a
// sync per call, so a level that does not fit in S reads nothing (and writes nothing) instead.
#include <torch/library.h>

#include "cuda_common.cuh"

namespace samdetr {
namespace cuda {
namespace {

constexpr int kMaxMsdaLanes = 32;  // an item's lanes stay within one warp: its reductions are warp shuffles

struct MsdaDims {
  int64_t B, S, heads, D, Q, L, P;
};

// (H, W, first row) of level l; false when the level is negative or does not fit in the S rows.
__device__ __forceinline__ bool device_level(const int64_t* shapes, const int64_t* starts, int64_t l, int64_t S,
                                             int64_t* H, int64_t* W, int64_t* start) {
  *H = shapes[2 * l];
  *W = shapes[2 * l + 1];
  *start = starts[l];
  return *H >= 0 && *W >= 0 && *start >= 0 && *start <= S && (*H == 0 || *W <= (S - *start) / *H);
}

// The sum of v over the `lanes` (a power of two <= 32) consecutive threads of an item, in every one of them; a
// fixed butterfly order, so deterministic. Every thread of the warp must call it.
template <typename A>
__device__ __forceinline__ A lanes_sum(A v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, lanes);
  return v;
}

// out (B, Q, heads * D) = per item, the sum over levels and points of weight * the bilinear sample of value
// (B, S, heads, D); locations (B, Q, heads, L, P, 2), weights (B, Q, heads, L, P).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                              const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                              const scalar_t* __restrict__ weights, scalar_t* __restrict__ out, MsdaDims n, int lanes,
                              int items_per_block, int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t item = blockIdx.x * static_cast<int64_t>(items_per_block) + threadIdx.x / lanes;
  if (item >= items) return;  // no synchronisation follows
  const int lane = threadIdx.x % lanes;
  const int64_t b = item / (n.Q * n.heads), h = item % n.heads, row_stride = n.heads * n.D;
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < n.D; c += static_cast<int64_t>(lanes) * VEC) {
    acc_t acc[VEC] = {};
    for (int64_t l = 0; l < n.L; ++l) {
      int64_t H, W, start;
      if (!device_level(shapes, starts, l, n.S, &H, &W, &start)) continue;
      const scalar_t* rows = value + ((b * n.S + start) * n.heads + h) * n.D + c;
      for (int64_t p = 0; p < n.P; ++p) {
        const int64_t s = (item * n.L + l) * n.P + p;
        const auto corners = level_corners<acc_t>(static_cast<acc_t>(locations[2 * s]),
                                                  static_cast<acc_t>(locations[2 * s + 1]), W, H);
        const acc_t weight = static_cast<acc_t>(weights[s]);
        for (int k = 0; k < corners.count; ++k) {
          acc_t v[VEC];
          load_vec<VEC>(rows + corners.index[k] * row_stride, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += weight * corners.w[k] * v[i];
        }
      }
    }
    store_vec<VEC>(out + item * n.D + c, acc);
  }
}

// Location and weight gradients of every sample (reduced over the item's lanes by warp shuffles: deterministic)
// and, with SCATTER, the value gradient added into grad_value (B, S, heads, D, op-math type) with atomics, adjacent
// lanes on adjacent channels. Threads past the last item run along without reading or writing (the shuffles need
// every lane of the warp).
template <typename scalar_t, int VEC, bool SCATTER>
__global__ void __launch_bounds__(kThreads)
ms_deform_attn_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                               at::opmath_type<scalar_t>* __restrict__ grad_value, scalar_t* __restrict__ grad_locations,
                               scalar_t* __restrict__ grad_weights, MsdaDims n, int lanes, int items_per_block,
                               int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t item = blockIdx.x * static_cast<int64_t>(items_per_block) + threadIdx.x / lanes;
  const bool valid = item < items;
  const int lane = threadIdx.x % lanes;
  const int64_t b = item / (n.Q * n.heads), h = item % n.heads, row_stride = n.heads * n.D;
  for (int64_t l = 0; l < n.L; ++l) {
    int64_t H, W, start;
    if (!device_level(shapes, starts, l, n.S, &H, &W, &start)) continue;  // the same for every thread
    const int64_t row0 = ((b * n.S + start) * n.heads + h) * n.D;
    for (int64_t p = 0; p < n.P; ++p) {
      const int64_t s = (item * n.L + l) * n.P + p;
      LevelCorners<acc_t> corners;
      acc_t weight = 0;
      if (valid) {
        corners = level_corners<acc_t>(static_cast<acc_t>(locations[2 * s]), static_cast<acc_t>(locations[2 * s + 1]),
                                       W, H);
        weight = static_cast<acc_t>(weights[s]);
      }
      acc_t dot_value = 0, dot_x = 0, dot_y = 0;  // this lane's channels of grad . (sample, d sample / dx, / dy)
      for (int64_t c = static_cast<int64_t>(lane) * VEC; corners.count > 0 && c < n.D;
           c += static_cast<int64_t>(lanes) * VEC) {
        acc_t g[VEC];
        load_vec<VEC>(grad_out + item * n.D + c, g);
        for (int k = 0; k < corners.count; ++k) {
          acc_t v[VEC];
          load_vec<VEC>(value + row0 + corners.index[k] * row_stride + c, v);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            dot_value += g[i] * corners.w[k] * v[i];
            dot_x += g[i] * corners.w_dx[k] * v[i];
            dot_y += g[i] * corners.w_dy[k] * v[i];
            if (SCATTER) atomicAdd(grad_value + row0 + corners.index[k] * row_stride + c + i, weight * corners.w[k] * g[i]);
          }
        }
      }
      dot_value = lanes_sum(dot_value, lanes);
      dot_x = lanes_sum(dot_x, lanes);
      dot_y = lanes_sum(dot_y, lanes);
      if (valid && lane == 0) {
        grad_weights[s] = static_cast<scalar_t>(dot_value);
        grad_locations[2 * s] = static_cast<scalar_t>(weight * dot_x);
        grad_locations[2 * s + 1] = static_cast<scalar_t>(weight * dot_y);
      }
    }
  }
}

// The value gradient without atomics, for torch.use_deterministic_algorithms(True): one thread per (batch, head,
// level, channel) walks every query and point in order and owns its channel of the level's rows of that head, so
// plain read-modify-writes suffice and the sum's order is fixed. Threads of a warp share samples (consecutive
// channels), so their loads and stores coalesce.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
ms_deform_attn_value_grad_ordered_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ shapes,
                                         const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                                         const scalar_t* __restrict__ weights,
                                         at::opmath_type<scalar_t>* __restrict__ grad_value, MsdaDims n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n.B * n.heads * n.L * n.D) return;
  const int64_t c = t % n.D, l = t / n.D % n.L, h = t / (n.D * n.L) % n.heads, b = t / (n.D * n.L * n.heads);
  int64_t H, W, start;
  if (!device_level(shapes, starts, l, n.S, &H, &W, &start)) return;
  acc_t* rows = grad_value + ((b * n.S + start) * n.heads + h) * n.D + c;
  const int64_t row_stride = n.heads * n.D;
  for (int64_t q = 0; q < n.Q; ++q) {
    const int64_t item = (b * n.Q + q) * n.heads + h;
    const acc_t g = static_cast<acc_t>(grad_out[item * n.D + c]);
    for (int64_t p = 0; p < n.P; ++p) {
      const int64_t s = (item * n.L + l) * n.P + p;
      const auto corners = level_corners<acc_t>(static_cast<acc_t>(locations[2 * s]),
                                                static_cast<acc_t>(locations[2 * s + 1]), W, H);
      const acc_t weight = static_cast<acc_t>(weights[s]);
      for (int k = 0; k < corners.count; ++k) rows[corners.index[k] * row_stride] += weight * corners.w[k] * g;
    }
  }
}

MsdaDims dims_of(const at::Tensor& value, const at::Tensor& locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), locations.size(1), locations.size(3),
          locations.size(4)};
}

ItemTiling msda_tiling(int64_t items, int64_t vectors) {
  int lanes = 1;
  while (lanes < vectors && lanes < kMaxMsdaLanes) lanes *= 2;
  const int per_block = kThreads / lanes;
  return {lanes, per_block, (items + per_block - 1) / per_block};
}

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs("ms_deform_attn", value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const MsdaDims n = dims_of(value, sampling_locations);
  at::Tensor out = at::zeros({n.B, n.Q, n.heads * n.D}, value.options());
  if (out.numel() == 0 || n.L * n.P == 0) return out;
  const at::Tensor val = value.contiguous(), loc = sampling_locations.contiguous(), wgt = attention_weights.contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "samdetr_ms_deform_attn_forward_cuda",
                                  [&] {
    dispatch_vector_width<scalar_t>(n.D, {val.const_data_ptr(), out.const_data_ptr()}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const int64_t items = n.B * n.Q * n.heads;
      const ItemTiling tiling = msda_tiling(items, n.D / VEC);
      ms_deform_attn_forward_kernel<scalar_t, VEC><<<tiling.blocks, kThreads, 0, stream>>>(
          val.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
          loc.const_data_ptr<scalar_t>(), wgt.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
          tiling.lanes, tiling.items_per_block, items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// Returns (grad_value, grad_sampling_locations, grad_attention_weights). Under
// torch.use_deterministic_algorithms(True) the value gradient comes from the ordered kernel instead of the atomic
// scatter, so the whole backward is deterministic.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    std::array<bool, 3> output_mask) {
  const char* op = "ms_deform_attn_backward";
  check_ms_deform_attn_inputs(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const MsdaDims n = dims_of(value, sampling_locations);
  check_ms_deform_attn_grad_output(op, grad_output, value, n.B, n.Q);
  const bool need_value = output_mask[0], need_sample_grads = output_mask[1] || output_mask[2];
  const bool ordered = at::globalContext().deterministicAlgorithms();
  const bool low_precision = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(low_precision ? at::kFloat
                                                                                            : value.scalar_type()));
  at::Tensor grad_locations = at::zeros_like(sampling_locations, at::MemoryFormat::Contiguous);
  at::Tensor grad_weights = at::zeros_like(attention_weights, at::MemoryFormat::Contiguous);
  const auto finish = [&] {
    return std::make_tuple(low_precision ? grad_value_acc.to(value.scalar_type()) : grad_value_acc, grad_locations,
                           grad_weights);
  };
  if (grad_output.numel() == 0 || n.L * n.P == 0 || !(need_value || need_sample_grads)) return finish();
  const at::Tensor val = value.contiguous(), loc = sampling_locations.contiguous(), wgt = attention_weights.contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "samdetr_ms_deform_attn_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (need_sample_grads || (need_value && !ordered)) {
      dispatch_vector_width<scalar_t>(n.D, {val.const_data_ptr(), grad.const_data_ptr()}, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        const int64_t items = n.B * n.Q * n.heads;
        const ItemTiling tiling = msda_tiling(items, n.D / VEC);
        const auto launch = [&](auto kernel) {
          kernel<<<tiling.blocks, kThreads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), val.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
              starts.const_data_ptr<int64_t>(), loc.const_data_ptr<scalar_t>(), wgt.const_data_ptr<scalar_t>(),
              grad_value_acc.mutable_data_ptr<acc_t>(), grad_locations.mutable_data_ptr<scalar_t>(),
              grad_weights.mutable_data_ptr<scalar_t>(), n, tiling.lanes, tiling.items_per_block, items);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (need_value && !ordered) {
          launch(ms_deform_attn_backward_kernel<scalar_t, VEC, true>);
        } else {
          launch(ms_deform_attn_backward_kernel<scalar_t, VEC, false>);
        }
      });
    }
    if (need_value && ordered) {
      const int64_t threads = n.B * n.heads * n.L * n.D;
      ms_deform_attn_value_grad_ordered_kernel<scalar_t><<<(threads + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
          loc.const_data_ptr<scalar_t>(), wgt.const_data_ptr<scalar_t>(), grad_value_acc.mutable_data_ptr<acc_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward);
}

}  // namespace cuda
}  // namespace samdetr
