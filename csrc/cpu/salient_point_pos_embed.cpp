// CPU kernels of samdetr_ops::salient_point_pos_embed (forward and backward), float32 / float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "cpu_common.h"

namespace samdetr {
namespace cpu {
namespace {

// (half,) frequencies 1 / temperature^(2 (k // 2) / half), shared by every point.
template <typename T>
std::vector<T> inverse_periods(int64_t half, double temperature) {
  std::vector<T> inv(half);
  for (int64_t k = 0; k < half; ++k) inv[k] = sine_inverse_period<T>(k, half, static_cast<T>(temperature));
  return inv;
}

// boxes (B, N, 4) cx cy w h; points (B, N, M, 2) x y; weight_logits (B, N, M, D) -> (B, N, M, D), laid out as
// D/2 features of y then D/2 features of x.
at::Tensor pos_embed_forward(const at::Tensor& boxes, const at::Tensor& points, const at::Tensor& weight_logits,
                             double temperature) {
  check_pos_embed_inputs(boxes, points, weight_logits);
  check_cpu_dtype("salient_point_pos_embed", boxes, "boxes_cxcywh");
  const int64_t M = points.size(2), D = weight_logits.size(3), half = D / 2;
  at::Tensor out = at::empty(weight_logits.sizes(), weight_logits.options());
  if (out.numel() == 0) return out;
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "samdetr_pos_embed_forward_cpu", [&] {
    const std::vector<scalar_t> inv = inverse_periods<scalar_t>(half, temperature);
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel() / D, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = (b * N + n) * M + m
        const scalar_t* bx = box_ptr + (r / M) * 4;
        const scalar_t px = bx[0] + scalar_t(0.5) * bx[2] * pts_ptr[2 * r];
        const scalar_t py = bx[1] + scalar_t(0.5) * bx[3] * pts_ptr[2 * r + 1];
        const scalar_t* l = logit_ptr + r * D;
        scalar_t* o = out_ptr + r * D;
        scalar_t unused;
        for (int64_t k = 0; k < half; ++k) {
          o[k] = sine_feature(py, k, inv[k], &unused) * sigmoid(l[k]);
          o[half + k] = sine_feature(px, k, inv[k], &unused) * sigmoid(l[half + k]);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pos_embed_backward(const at::Tensor& grad_output,
                                                                  const at::Tensor& boxes, const at::Tensor& points,
                                                                  const at::Tensor& weight_logits,
                                                                  double temperature) {
  check_pos_embed_inputs(boxes, points, weight_logits);
  check_cpu_dtype("salient_point_pos_embed_backward", boxes, "boxes_cxcywh");
  TORCH_CHECK_VALUE(grad_output.sizes() == weight_logits.sizes(),
                    "samdetr_ops.salient_point_pos_embed_backward: `grad_output` must have shape (B, N, M, D) = ",
                    weight_logits.sizes(), ", got ", grad_output.sizes());
  check_same_device_dtype("salient_point_pos_embed_backward", boxes, "boxes_cxcywh", grad_output, "grad_output");
  const int64_t B = boxes.size(0), N = boxes.size(1), M = points.size(2), D = weight_logits.size(3), half = D / 2;
  at::Tensor grad_boxes = at::zeros({B, N, 4}, boxes.options());
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, D}, weight_logits.options());
  if (B * N * M * D == 0) return {grad_boxes, grad_points, grad_logits};
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "samdetr_pos_embed_backward_cpu", [&] {
    const std::vector<scalar_t> inv = inverse_periods<scalar_t>(half, temperature);
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    scalar_t* gbox_ptr = grad_boxes.mutable_data_ptr<scalar_t>();
    scalar_t* gpts_ptr = grad_points.mutable_data_ptr<scalar_t>();
    scalar_t* glogit_ptr = grad_logits.mutable_data_ptr<scalar_t>();
    // One task per box: the box gradient sums over its M points without sharing a write with another task.
    at::parallel_for(0, B * N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t bn = begin; bn < end; ++bn) {
        const scalar_t* bx = box_ptr + bn * 4;
        scalar_t g_cx = 0, g_cy = 0, g_w = 0, g_h = 0;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t r = bn * M + m;
          const scalar_t pt_x = pts_ptr[2 * r], pt_y = pts_ptr[2 * r + 1];
          const scalar_t p[2] = {bx[1] + scalar_t(0.5) * bx[3] * pt_y, bx[0] + scalar_t(0.5) * bx[2] * pt_x};
          scalar_t g_p[2] = {0, 0};  // d loss / d (py, px)
          for (int64_t k = 0; k < D; ++k) {
            const int64_t axis = k < half ? 0 : 1, kk = k - axis * half;
            scalar_t de_dp;
            const scalar_t e = sine_feature(p[axis], kk, inv[kk], &de_dp);
            const scalar_t s = sigmoid(logit_ptr[r * D + k]);
            const scalar_t go = grad_ptr[r * D + k];
            glogit_ptr[r * D + k] = go * e * s * (scalar_t(1) - s);
            g_p[axis] += go * s * de_dp;
          }
          gpts_ptr[2 * r] = g_p[1] * scalar_t(0.5) * bx[2];
          gpts_ptr[2 * r + 1] = g_p[0] * scalar_t(0.5) * bx[3];
          g_cx += g_p[1];
          g_cy += g_p[0];
          g_w += g_p[1] * scalar_t(0.5) * pt_x;
          g_h += g_p[0] * scalar_t(0.5) * pt_y;
        }
        scalar_t* gb = gbox_ptr + bn * 4;
        gb[0] = g_cx;
        gb[1] = g_cy;
        gb[2] = g_w;
        gb[3] = g_h;
      }
    });
  });
  return {grad_boxes, grad_points, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CPU, m) {
  m.impl("salient_point_pos_embed", &pos_embed_forward);
  m.impl("salient_point_pos_embed_backward", &pos_embed_backward);
}

}  // namespace cpu
}  // namespace samdetr
