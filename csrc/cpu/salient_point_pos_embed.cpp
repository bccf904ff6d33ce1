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

// ((half + 1) / 2,) frequencies of the feature pairs (2j, 2j+1), shared by every point.
template <typename T>
std::vector<T> pair_frequencies(int64_t half, double temperature) {
  std::vector<T> freq((half + 1) / 2);
  for (int64_t j = 0; j < int64_t(freq.size()); ++j)
    freq[j] = sine_pair_frequency<T>(j, half, static_cast<T>(temperature));
  return freq;
}

// out[0 : half] = embedding of p, features interleaved sin/cos, times sigmoid(logits[0 : half]).
template <typename T>
inline void embed_coordinate(T p, const std::vector<T>& freq, int64_t half, const T* logits, T* out) {
  for (int64_t j = 0; j < int64_t(freq.size()); ++j) {
    T sin_t, cos_t;
    sine_pair(p, freq[j], &sin_t, &cos_t);
    out[2 * j] = sin_t * sigmoid(logits[2 * j]);
    if (2 * j + 1 < half) out[2 * j + 1] = cos_t * sigmoid(logits[2 * j + 1]);
  }
}

// Backward of embed_coordinate: writes the logits' gradient and returns d loss / d p.
template <typename T>
inline T embed_coordinate_backward(T p, const std::vector<T>& freq, int64_t half, const T* logits, const T* grad,
                                   T* grad_logits) {
  T grad_p = 0;
  for (int64_t j = 0; j < int64_t(freq.size()); ++j) {
    T sin_t, cos_t;
    const T dt_dp = sine_pair(p, freq[j], &sin_t, &cos_t);
    const T values[2] = {sin_t, cos_t}, derivatives[2] = {cos_t * dt_dp, -sin_t * dt_dp};
    for (int64_t i = 0; i < 2 && 2 * j + i < half; ++i) {
      const int64_t k = 2 * j + i;
      const T s = sigmoid(logits[k]);
      grad_logits[k] = grad[k] * values[i] * s * (T(1) - s);
      grad_p += grad[k] * s * derivatives[i];
    }
  }
  return grad_p;
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
    const std::vector<scalar_t> freq = pair_frequencies<scalar_t>(half, temperature);
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel() / D, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = (b * N + n) * M + m
        const scalar_t* bx = box_ptr + (r / M) * 4;
        const scalar_t px = bx[0] + scalar_t(0.5) * bx[2] * pts_ptr[2 * r];
        const scalar_t py = bx[1] + scalar_t(0.5) * bx[3] * pts_ptr[2 * r + 1];
        embed_coordinate(py, freq, half, logit_ptr + r * D, out_ptr + r * D);
        embed_coordinate(px, freq, half, logit_ptr + r * D + half, out_ptr + r * D + half);
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
  check_grad_output("salient_point_pos_embed_backward", grad_output, weight_logits, boxes, "boxes_cxcywh");
  const int64_t B = boxes.size(0), N = boxes.size(1), M = points.size(2), D = weight_logits.size(3), half = D / 2;
  at::Tensor grad_boxes = at::zeros({B, N, 4}, boxes.options());
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, D}, weight_logits.options());
  if (B * N * M * D == 0) return {grad_boxes, grad_points, grad_logits};
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "samdetr_pos_embed_backward_cpu", [&] {
    const std::vector<scalar_t> freq = pair_frequencies<scalar_t>(half, temperature);
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
          const scalar_t px = bx[0] + scalar_t(0.5) * bx[2] * pt_x, py = bx[1] + scalar_t(0.5) * bx[3] * pt_y;
          // d loss / d (py, px): y features come first in each row
          const scalar_t g_p[2] = {
              embed_coordinate_backward(py, freq, half, logit_ptr + r * D, grad_ptr + r * D, glogit_ptr + r * D),
              embed_coordinate_backward(px, freq, half, logit_ptr + r * D + half, grad_ptr + r * D + half,
                                        glogit_ptr + r * D + half)};
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
