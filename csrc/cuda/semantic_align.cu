// CUDA kernels of samdetr_ops::semantic_align: float32, float64, float16, bfloat16 (op-math float32 for the last
// two). One item per salient point (RoI, m); the item's lanes walk its C channels in 16-byte vectors. The RoI
// bins under the point's four grid_sample corners are averaged on the fly from the channels-last features (they
// stay in L2: the features are a few MB); nothing of size (B*N, C, S, S) is ever written.
#include <torch/library.h>

#include "cuda_common.cuh"

namespace samdetr {
namespace cuda {
namespace {

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
semantic_align_forward_kernel(const scalar_t* __restrict__ features,  // (B, H, W, C)
                              const scalar_t* __restrict__ boxes,     // (B, N, 4)
                              const scalar_t* __restrict__ points,    // (B, N, M, 2)
                              const scalar_t* __restrict__ logits,    // (B, N, M, C)
                              scalar_t* __restrict__ out,             // (B, N, M, C)
                              int64_t N, int64_t M, int64_t C, int64_t H, int64_t W, PooledSize pooled,
                              at::opmath_type<scalar_t> scale, int64_t sampling_ratio, bool aligned, int lanes,
                              int items_per_block, int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t item = blockIdx.x * static_cast<int64_t>(items_per_block) + threadIdx.x / lanes;  // (roi, m)
  if (item >= items) return;
  const int lane = threadIdx.x % lanes;
  const int64_t roi = item / M, b = roi / N;
  const scalar_t* box = boxes + roi * 4;
  const RoiGeometry<acc_t> g =
      roi_geometry<acc_t>(box[0], box[1], box[2], box[3], scale, pooled.h, pooled.w, sampling_ratio, aligned);
  GridTaps<acc_t> t;
  const bool on_grid = grid_taps<acc_t>(points[2 * item], points[2 * item + 1], pooled.w, pooled.h, &t);
  const scalar_t* feat = features + b * H * W * C;
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < C; c += static_cast<int64_t>(lanes) * VEC) {
    acc_t q[VEC] = {};
    if (on_grid) {
#pragma unroll
      for (int ky = 0; ky < 2; ++ky)
#pragma unroll
        for (int kx = 0; kx < 2; ++kx)
          if (t.in_y[ky] && t.in_x[kx]) add_bin(g, t.y0 + ky, t.x0 + kx, feat, H, W, C, c, t.wy[ky] * t.wx[kx], q);
    }
    acc_t l[VEC];
    load_vec<VEC>(logits + item * C + c, l);
#pragma unroll
    for (int i = 0; i < VEC; ++i) q[i] = reweight(q[i], l[i]);
    store_vec<VEC>(out + item * C + c, q);
  }
}

// Per point: recomputes the (at most 4) corner bins, writes the logits' gradient, reduces the point's gradient
// over channels inside the block (one plain store per point, no atomics), and scatters the features' gradient.
// Register budget: 2 blocks per SM (at most 128 registers a thread), with at most 4 channels a lane (see the
// launcher): 8 per lane took ~200 registers (ptxas -v, sm_90) and one block per SM. float64 (two registers a
// value) gets one block per SM: under the 128 cap it spilled 168 bytes.
template <typename scalar_t>
constexpr int kBackwardBlocksPerSM = std::is_same<at::opmath_type<scalar_t>, double>::value ? 1 : 2;

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSM<scalar_t>)
semantic_align_backward_kernel(const scalar_t* __restrict__ grad,      // (B, N, M, C)
                               const scalar_t* __restrict__ features,  // (B, H, W, C)
                               const scalar_t* __restrict__ boxes,     // (B, N, 4)
                               const scalar_t* __restrict__ points,    // (B, N, M, 2)
                               const scalar_t* __restrict__ logits,    // (B, N, M, C)
                               at::opmath_type<scalar_t>* __restrict__ grad_features,  // (B, H, W, C)
                               scalar_t* __restrict__ grad_points,     // (B, N, M, 2)
                               scalar_t* __restrict__ grad_logits,     // (B, N, M, C)
                               int64_t N, int64_t M, int64_t C, int64_t H, int64_t W, PooledSize pooled,
                               at::opmath_type<scalar_t> scale, int64_t sampling_ratio, bool aligned,
                               bool need_features, bool need_points, bool need_logits, int lanes,
                               int items_per_block, int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kThreads];
  const int64_t item = blockIdx.x * static_cast<int64_t>(items_per_block) + threadIdx.x / lanes;  // (roi, m)
  const bool active = item < items;  // inactive threads still join the block reductions below
  const int lane = threadIdx.x % lanes;
  acc_t grad_x = 0, grad_y = 0;
  if (active) {
    const int64_t roi = item / M, b = roi / N;
    const scalar_t* box = boxes + roi * 4;
    const RoiGeometry<acc_t> g =
        roi_geometry<acc_t>(box[0], box[1], box[2], box[3], scale, pooled.h, pooled.w, sampling_ratio, aligned);
    GridTaps<acc_t> t;
    const bool on_grid = grid_taps<acc_t>(points[2 * item], points[2 * item + 1], pooled.w, pooled.h, &t);
    const bool need_values = need_points || need_logits;
    const scalar_t* feat = features + b * H * W * C;
    acc_t* gfeat = grad_features + b * H * W * C;
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < C; c += static_cast<int64_t>(lanes) * VEC) {
      acc_t go[VEC], l[VEC], s[VEC], gq[VEC];
      load_vec<VEC>(grad + item * C + c, go);
      load_vec<VEC>(logits + item * C + c, l);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        s[i] = sigmoid(l[i]);
        gq[i] = go[i] * s[i];  // d loss / d q
      }
      acc_t q[VEC] = {}, dq_dx[VEC] = {}, dq_dy[VEC] = {};
      if (on_grid) {
#pragma unroll
        for (int ky = 0; ky < 2; ++ky) {
#pragma unroll
          for (int kx = 0; kx < 2; ++kx) {
            if (!(t.in_y[ky] && t.in_x[kx])) continue;
            const int64_t by = t.y0 + ky, bx = t.x0 + kx;
            const acc_t w = t.wy[ky] * t.wx[kx];
            if (need_values) {
              acc_t v[VEC] = {};
              add_bin(g, by, bx, feat, H, W, C, c, acc_t(1), v);
#pragma unroll
              for (int i = 0; i < VEC; ++i) {
                q[i] += w * v[i];
                dq_dx[i] += t.wy[ky] * t.dwx[kx] * v[i];
                dq_dy[i] += t.dwy[ky] * t.wx[kx] * v[i];
              }
            }
            if (need_features && g.grid_h > 0 && g.grid_w > 0) {
              acc_t gb[VEC];
#pragma unroll
              for (int i = 0; i < VEC; ++i) gb[i] = w * gq[i] * g.inv_count;
              for_each_bin_sample(g, by, bx, H, W,
                                  [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, acc_t w00, acc_t w01,
                                      acc_t w10, acc_t w11) {
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
        }
      }
      if (need_logits) {
        acc_t gl[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) gl[i] = go[i] * q[i] * s[i] * (acc_t(1) - s[i]);
        store_vec<VEC>(grad_logits + item * C + c, gl);
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        grad_x += gq[i] * dq_dx[i];
        grad_y += gq[i] * dq_dy[i];
      }
    }
  }
  if (need_points) {  // uniform across the block: every thread reaches both reductions
    grad_x = item_sum(grad_x, scratch, lanes);
    grad_y = item_sum(grad_y, scratch, lanes);
    if (active && lane == 0) {
      grad_points[2 * item] = static_cast<scalar_t>(grad_x);
      grad_points[2 * item + 1] = static_cast<scalar_t>(grad_y);
    }
  }
}

at::Tensor semantic_align_forward(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& points,
                                  const at::Tensor& weight_logits, at::IntArrayRef output_size, double spatial_scale,
                                  int64_t sampling_ratio, bool aligned) {
  const PooledSize pooled =
      check_semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1), M = points.size(2);
  if (B * N * M * C == 0 || H == 0 || W == 0) return at::zeros({B, N, M, C}, features.options());
  at::Tensor out = at::empty({B, N, M, C}, features.options());
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "samdetr_semantic_align_forward_cuda", [&] {
    const std::initializer_list<const void*> vectors = {feat.const_data_ptr(), logits.const_data_ptr(),
                                                        out.const_data_ptr()};
    dispatch_vector_width<scalar_t>(C, vectors, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const int64_t items = B * N * M;
      const ItemTiling tiling = item_tiling(items, C / VEC);
      semantic_align_forward_kernel<scalar_t, VEC><<<tiling.blocks, kThreads, 0, stream>>>(
          feat.const_data_ptr<scalar_t>(), box.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
          logits.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, M, C, H, W, pooled,
          static_cast<at::opmath_type<scalar_t>>(spatial_scale), sampling_ratio, aligned, tiling.lanes,
          tiling.items_per_block, items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_align_backward(
    const at::Tensor& grad_output, const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& points,
    const at::Tensor& weight_logits, at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio,
    bool aligned, std::array<bool, 3> output_mask) {
  const PooledSize pooled =
      check_semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio);
  check_grad_output("semantic_align_backward", grad_output, weight_logits, features, "features");
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1), M = points.size(2);
  const bool need_feat = output_mask[0], need_points = output_mask[1], need_logits = output_mask[2];
  FeatureGradAccumulator acc(B, C, H, W, features.options());
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, C}, weight_logits.options());
  const bool empty = B * N * M * C == 0 || H == 0 || W == 0;
  if (empty || !(need_feat || need_points || need_logits))
    return {acc.finish(), grad_points, grad_logits};
  if (need_feat) alert_atomic_scatter("semantic_align_backward");
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "samdetr_semantic_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::initializer_list<const void*> vectors = {feat.const_data_ptr(), logits.const_data_ptr(),
                                                        grad.const_data_ptr(), grad_logits.const_data_ptr()};
    dispatch_vector_width<scalar_t, /*kMaxElements=*/4>(C, vectors, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const int64_t items = B * N * M;
      const ItemTiling tiling = item_tiling(items, C / VEC);
      semantic_align_backward_kernel<scalar_t, VEC><<<tiling.blocks, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(), box.const_data_ptr<scalar_t>(),
          pts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(), acc.accum.mutable_data_ptr<acc_t>(),
          grad_points.mutable_data_ptr<scalar_t>(), grad_logits.mutable_data_ptr<scalar_t>(), N, M, C, H, W, pooled,
          static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, need_feat, need_points, need_logits,
          tiling.lanes, tiling.items_per_block, items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {acc.finish(), grad_points, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CUDA, m) {
  m.impl("semantic_align", &semantic_align_forward);
  m.impl("semantic_align_backward", &semantic_align_backward);
}

}  // namespace cuda
}  // namespace samdetr
