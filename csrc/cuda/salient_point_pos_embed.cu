// CUDA kernels of samdetr_ops::salient_point_pos_embed: float32, float64, float16, bfloat16 (op-math float32).
#include <torch/library.h>

#include "cuda_common.cuh"

namespace samdetr {
namespace cuda {
namespace {

// The point's position along `axis` (0 = y, 1 = x; a row's y features come first).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t row_position(const scalar_t* box, const scalar_t* point, int axis) {
  const int k = 1 - axis;  // box is (cx, cy, w, h) and point (x, y): y is index 1, x index 0
  return point_position(static_cast<acc_t>(box[k]), static_cast<acc_t>(box[2 + k]), static_cast<acc_t>(point[k]));
}

// One thread per (row, axis, feature pair j): one sin/cos evaluation gives features 2j (sin) and 2j+1 (cos).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pos_embed_forward_kernel(const scalar_t* __restrict__ boxes,   // (B, N, 4)
                         const scalar_t* __restrict__ points,  // (B, N, M, 2)
                         const scalar_t* __restrict__ logits,  // (B, N, M, D)
                         scalar_t* __restrict__ out,           // (B, N, M, D)
                         int64_t M, int64_t half, int64_t pairs, at::opmath_type<scalar_t> temperature,
                         int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i % pairs, axis = (i / pairs) % 2, row = i / (2 * pairs);
    const acc_t p = row_position<acc_t>(boxes + (row / M) * 4, points + row * 2, static_cast<int>(axis));
    const int64_t k = row * 2 * half + axis * half + 2 * j;
    const bool has_cos = 2 * j + 1 < half;  // an odd half's last pair has no cos feature
    acc_t out_sin, out_cos;
    sine_pair_forward(p, sine_pair_frequency<acc_t>(j, half, temperature), static_cast<acc_t>(logits[k]),
                      has_cos ? static_cast<acc_t>(logits[k + 1]) : acc_t(0), &out_sin, &out_cos);
    out[k] = static_cast<scalar_t>(out_sin);
    if (has_cos) out[k + 1] = static_cast<scalar_t>(out_cos);
  }
}

// One warp per row (b, n, m): lanes walk the row's feature pairs, write the logits' gradient and reduce
// d loss / d (py, px) with shuffles; lane 0 writes the point's gradient and the row's share of its box's gradient
// (summed over the M rows of a box afterwards, in a fixed order: no atomics).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pos_embed_backward_kernel(const scalar_t* __restrict__ grad,    // (B, N, M, D)
                          const scalar_t* __restrict__ boxes,   // (B, N, 4)
                          const scalar_t* __restrict__ points,  // (B, N, M, 2)
                          const scalar_t* __restrict__ logits,  // (B, N, M, D)
                          scalar_t* __restrict__ grad_points,   // (B, N, M, 2)
                          scalar_t* __restrict__ grad_logits,   // (B, N, M, D)
                          at::opmath_type<scalar_t>* __restrict__ box_partials,  // (B, N, M, 4)
                          int64_t M, int64_t half, int64_t pairs, at::opmath_type<scalar_t> temperature,
                          int64_t rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  // Grid-stride over rows, one warp per row: a warp enters and leaves the loop as a whole, so the shuffles below
  // always see all 32 lanes.
  for (int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; row < rows; row += warps) {
    const scalar_t* box = boxes + (row / M) * 4;
    const scalar_t* point = points + row * 2;
    acc_t grad_p[2] = {0, 0};  // (y, x)
    for (int64_t i = lane; i < 2 * pairs; i += 32) {
      const int axis = static_cast<int>(i / pairs);
      const int64_t j = i % pairs;
      const acc_t p = row_position<acc_t>(box, point, axis);
      const int64_t k = row * 2 * half + axis * half + 2 * j;
      const bool has_cos = 2 * j + 1 < half;  // a missing cos feature enters with grad 0: it adds exactly 0
      acc_t grad_logit_sin, grad_logit_cos;
      grad_p[axis] += sine_pair_backward(p, sine_pair_frequency<acc_t>(j, half, temperature),
                                         static_cast<acc_t>(grad[k]), static_cast<acc_t>(logits[k]),
                                         has_cos ? static_cast<acc_t>(grad[k + 1]) : acc_t(0),
                                         has_cos ? static_cast<acc_t>(logits[k + 1]) : acc_t(0), &grad_logit_sin,
                                         &grad_logit_cos);
      grad_logits[k] = static_cast<scalar_t>(grad_logit_sin);
      if (has_cos) grad_logits[k + 1] = static_cast<scalar_t>(grad_logit_cos);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      grad_p[0] += __shfl_down_sync(0xffffffffu, grad_p[0], offset);
      grad_p[1] += __shfl_down_sync(0xffffffffu, grad_p[1], offset);
    }
    if (lane == 0) {
      acc_t* partial = box_partials + row * 4;  // d loss / d (cx, cy, w, h) from this row
      for (int axis = 0; axis < 2; ++axis) {
        const int k = 1 - axis;  // y is index 1 of box and point, x index 0
        acc_t grad_point;
        point_position_backward(grad_p[axis], static_cast<acc_t>(box[2 + k]), static_cast<acc_t>(point[k]),
                                &partial[k], &partial[2 + k], &grad_point);
        grad_points[row * 2 + k] = static_cast<scalar_t>(grad_point);
      }
    }
  }
}

int64_t grid_for(int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>((threads + kThreads - 1) / kThreads, int64_t(1) << 20));
}

at::Tensor pos_embed_forward(const at::Tensor& boxes, const at::Tensor& points, const at::Tensor& weight_logits,
                             double temperature) {
  check_pos_embed_inputs(boxes, points, weight_logits);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t M = points.size(2), D = weight_logits.size(3), half = D / 2, pairs = (half + 1) / 2;
  at::Tensor out = at::empty(weight_logits.sizes(), weight_logits.options());
  if (out.numel() == 0) return out;
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const int64_t total = (out.numel() / D) * 2 * pairs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "samdetr_pos_embed_forward_cuda",
                                  [&] {
    pos_embed_forward_kernel<scalar_t><<<grid_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        box.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), M, half, pairs, static_cast<at::opmath_type<scalar_t>>(temperature),
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pos_embed_backward(const at::Tensor& grad_output,
                                                                  const at::Tensor& boxes, const at::Tensor& points,
                                                                  const at::Tensor& weight_logits,
                                                                  double temperature) {
  check_pos_embed_inputs(boxes, points, weight_logits);
  check_grad_output("salient_point_pos_embed_backward", grad_output, weight_logits, boxes, "boxes_cxcywh");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t B = boxes.size(0), N = boxes.size(1), M = points.size(2), D = weight_logits.size(3);
  const int64_t half = D / 2, pairs = (half + 1) / 2, rows = B * N * M;
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, D}, weight_logits.options());
  if (rows * D == 0) return {at::zeros({B, N, 4}, boxes.options()), grad_points, grad_logits};
  const at::ScalarType acc_type = at::toOpMathType(boxes.scalar_type());
  at::Tensor box_partials = at::empty({B, N, M, 4}, boxes.options().dtype(acc_type));
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "samdetr_pos_embed_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pos_embed_backward_kernel<scalar_t><<<grid_for(rows * 32), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), box.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
        logits.const_data_ptr<scalar_t>(), grad_points.mutable_data_ptr<scalar_t>(),
        grad_logits.mutable_data_ptr<scalar_t>(), box_partials.mutable_data_ptr<acc_t>(), M, half, pairs,
        static_cast<acc_t>(temperature), rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {box_partials.sum(2).to(boxes.scalar_type()), grad_points, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CUDA, m) {
  m.impl("salient_point_pos_embed", &pos_embed_forward);
  m.impl("salient_point_pos_embed_backward", &pos_embed_backward);
}

}  // namespace cuda
}  // namespace samdetr
