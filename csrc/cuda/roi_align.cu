// CUDA kernels of samdetr_ops::roi_align: float32, float64, float16, bfloat16 (op-math float32 for the last two).
#include <torch/library.h>

#include "cuda_common.cuh"

namespace samdetr {
namespace cuda {
namespace {

constexpr int kForwardLanes = 8;    // channel-vector lanes per bin in the forward
constexpr int kBinsPerTile = 64;    // bins of one RoI held in shared memory at a time

// One block per (RoI, chunk of kForwardLanes * VEC channels). Threads compute bin averages reading whole channel
// vectors of the channels-last features, stage them in shared memory, then write the (C, S_h, S_w) output of the
// chunk as one contiguous run, so both the reads and the writes coalesce.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
roi_align_forward_kernel(const scalar_t* __restrict__ features,  // (B, H, W, C)
                         const scalar_t* __restrict__ boxes,     // (B, N, 4)
                         scalar_t* __restrict__ out,             // (B, N, C, S_h, S_w)
                         int64_t N, int64_t C, int64_t H, int64_t W, PooledSize pooled,
                         at::opmath_type<scalar_t> scale, int64_t sampling_ratio, bool aligned, int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kChunk = kForwardLanes * VEC;
  __shared__ acc_t tile[kBinsPerTile][kChunk + 1];  // +1: the write-out walks bins, keep it off one bank
  const int64_t roi = blockIdx.x / chunks;
  const int64_t c0 = (blockIdx.x % chunks) * kChunk;
  const int64_t b = roi / N;
  const scalar_t* box = boxes + roi * 4;
  const RoiGeometry<acc_t> g =
      roi_geometry<acc_t>(box[0], box[1], box[2], box[3], scale, pooled.h, pooled.w, sampling_ratio, aligned);
  const scalar_t* feat = features + b * H * W * C;
  const int lane = threadIdx.x % kForwardLanes, group = threadIdx.x / kForwardLanes;
  const int64_t c = c0 + lane * VEC;  // first channel of this thread's vector
  const int64_t chunk_channels = C - c0 < kChunk ? C - c0 : static_cast<int64_t>(kChunk);
  const int64_t bins_per_roi = pooled.h * pooled.w;
  for (int64_t bin0 = 0; bin0 < bins_per_roi; bin0 += kBinsPerTile) {
    const int64_t bins = bins_per_roi - bin0 < kBinsPerTile ? bins_per_roi - bin0 : static_cast<int64_t>(kBinsPerTile);
    for (int64_t t = group; t < bins; t += kThreads / kForwardLanes) {
      acc_t acc[VEC] = {};
      if (c < C) {
        const int64_t bin = bin0 + t;
        add_bin(g, bin / pooled.w, bin % pooled.w, feat, H, W, C, c, acc_t(1), acc);  // the bin average
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) tile[t][lane * VEC + i] = acc[i];
    }
    __syncthreads();
    // out[roi, c0 + k, bin0 + t] for k < chunk_channels, t < bins: runs of `bins` contiguous elements
    scalar_t* o = out + (roi * C + c0) * bins_per_roi + bin0;
    for (int64_t i = threadIdx.x; i < chunk_channels * bins; i += kThreads) {
      const int64_t k = i / bins, t = i % bins;
      o[k * bins_per_roi + t] = static_cast<scalar_t>(tile[t][k]);
    }
    __syncthreads();
  }
}

// One item per (RoI, bin): its lanes read the bin's gradient channel vectors and scatter them, weighted, into the
// feature gradient with atomics. Lanes of a warp cover different channels of the same samples, so no two lanes
// of a warp ever add to the same address.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
roi_align_backward_kernel(const scalar_t* __restrict__ grad,   // (B, N, S_h, S_w, C)
                          const scalar_t* __restrict__ boxes,  // (B, N, 4)
                          at::opmath_type<scalar_t>* __restrict__ grad_features,  // (B, H, W, C)
                          int64_t N, int64_t C, int64_t H, int64_t W, PooledSize pooled,
                          at::opmath_type<scalar_t> scale, int64_t sampling_ratio, bool aligned, int lanes,
                          int items_per_block, int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t item = blockIdx.x * static_cast<int64_t>(items_per_block) + threadIdx.x / lanes;
  if (item >= items) return;  // no block-wide synchronisation follows
  const int lane = threadIdx.x % lanes;
  const int64_t bins_per_roi = pooled.h * pooled.w;
  const int64_t roi = item / bins_per_roi, bin = item % bins_per_roi, b = roi / N;
  const scalar_t* box = boxes + roi * 4;
  const RoiGeometry<acc_t> g =
      roi_geometry<acc_t>(box[0], box[1], box[2], box[3], scale, pooled.h, pooled.w, sampling_ratio, aligned);
  if (g.grid_h == 0 || g.grid_w == 0) return;
  acc_t* gfeat = grad_features + b * H * W * C;
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < C; c += static_cast<int64_t>(lanes) * VEC) {
    acc_t gb[VEC];
    load_vec<VEC>(grad + item * C + c, gb);
#pragma unroll
    for (int i = 0; i < VEC; ++i) gb[i] *= g.inv_count;
    for_each_bin_sample(g, bin / pooled.w, bin % pooled.w, H, W,
                        [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, acc_t w00, acc_t w01, acc_t w10,
                            acc_t w11) {
#pragma unroll
                          for (int i = 0; i < VEC; ++i) {
                            atomicAdd(gfeat + (y0 * W + x0) * C + c + i, w00 * gb[i]);
                            atomicAdd(gfeat + (y0 * W + x1) * C + c + i, w01 * gb[i]);
                            atomicAdd(gfeat + (y1 * W + x0) * C + c + i, w10 * gb[i]);
                            atomicAdd(gfeat + (y1 * W + x1) * C + c + i, w11 * gb[i]);
                          }
                        });
  }
}

at::Tensor roi_align_forward(const at::Tensor& features, const at::Tensor& boxes, at::IntArrayRef output_size,
                             double spatial_scale, int64_t sampling_ratio, bool aligned) {
  const PooledSize pooled = check_roi_inputs("roi_align", features, boxes, output_size, sampling_ratio);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1);
  if (B * N * C == 0 || H == 0 || W == 0) return at::zeros({B, N, C, pooled.h, pooled.w}, features.options());
  at::Tensor out = at::empty({B, N, C, pooled.h, pooled.w}, features.options());
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "samdetr_roi_align_forward_cuda",
                                  [&] {
    const int vec = vector_width(C, sizeof(scalar_t), {feat.const_data_ptr()});
    SAMDETR_DISPATCH_VEC(vec, [&] {
      const int64_t chunk = kForwardLanes * VEC, chunks = (C + chunk - 1) / chunk;
      roi_align_forward_kernel<scalar_t, VEC><<<B * N * chunks, kThreads, 0, stream>>>(
          feat.const_data_ptr<scalar_t>(), box.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C,
          H, W, pooled, static_cast<at::opmath_type<scalar_t>>(spatial_scale), sampling_ratio, aligned, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor roi_align_backward(const at::Tensor& grad_output, const at::Tensor& boxes, c10::SymIntArrayRef feature_shape,
                              at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio,
                              bool aligned) {
  PooledSize pooled;
  const at::IntArrayRef shape =
      check_roi_align_backward_inputs(grad_output, boxes, feature_shape, output_size, &pooled);
  const int64_t B = shape[0], C = shape[1], H = shape[2], W = shape[3], N = boxes.size(1);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  FeatureGradAccumulator acc(B, C, H, W, grad_output.options());
  if (B * N * C * H * W == 0) return acc.finish(grad_output.scalar_type());
  alert_atomic_scatter("roi_align_backward");
  const at::Tensor grad_t = grad_output.permute({0, 1, 3, 4, 2}).contiguous();  // (B, N, S_h, S_w, C)
  const at::Tensor box = boxes.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "samdetr_roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int vec = vector_width(C, sizeof(scalar_t), {grad_t.const_data_ptr()});
    SAMDETR_DISPATCH_VEC(vec, [&] {
      const int64_t items = B * N * pooled.h * pooled.w;
      const ItemTiling tiling = item_tiling(items, C / VEC);
      roi_align_backward_kernel<scalar_t, VEC><<<tiling.blocks, kThreads, 0, stream>>>(
          grad_t.const_data_ptr<scalar_t>(), box.const_data_ptr<scalar_t>(), acc.accum.mutable_data_ptr<acc_t>(), N,
          C, H, W, pooled, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, tiling.lanes,
          tiling.items_per_block, items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return acc.finish(grad_output.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward);
  m.impl("roi_align_backward", &roi_align_backward);
}

}  // namespace cuda
}  // namespace samdetr
