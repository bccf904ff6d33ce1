// CPU kernels of samdetr_ops::salient_point_pos_embed (forward and backward): float32, float64, float16 and
// bfloat16 (read and written in their precision, computed in float32).
//
// Each row (b, n, m) holds D/2 features of the point's y then D/2 of its x. The loops walk a coordinate's feature
// pairs (2j: sin, 2j+1: cos, same argument) a SIMD vector of pairs at a time: one vector sin and one vector cos
// serve 2 * Vec::size() features, the formulas being samdetr_math.h's, as on CUDA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "cpu_common.h"
#include "cpu_vec.h"

namespace samdetr {
namespace cpu {
namespace {

// ((half + 1) / 2 rounded up to whole vectors,) frequencies of the feature pairs (2j, 2j+1), shared by every
// point; the padding lanes are 0 (their features are never stored).
template <typename acc_t>
std::vector<acc_t> pair_frequencies(int64_t half, double temperature) {
  const int64_t pairs = (half + 1) / 2, lanes = at::vec::Vectorized<acc_t>::size();
  std::vector<acc_t> freq((pairs + lanes - 1) / lanes * lanes, acc_t(0));
  for (int64_t j = 0; j < pairs; ++j) freq[j] = sine_pair_frequency<acc_t>(j, half, static_cast<acc_t>(temperature));
  return freq;
}

// The box centre, box size and point coordinate of one axis (0 = x, 1 = y) of row r, and the offset of the
// axis's features in the row: boxes are (cx, cy, w, h), points (x, y), and a row's y features come first.
struct Axis {
  int64_t centre, size, point, feature_offset;
};
inline Axis axis_layout(int axis, int64_t half) {
  return axis == 0 ? Axis{0, 2, 0, half} : Axis{1, 3, 1, 0};
}

// out[0 : half] = sine embedding of coordinate p times sigmoid(logits[0 : half]).
template <typename scalar_t>
void embed_coordinate(acc_type<scalar_t> p, const acc_type<scalar_t>* freq, int64_t half, const scalar_t* logits,
                      scalar_t* out) {
  using Vec = AccVec<scalar_t>;
  const Vec position(p);
  for (int64_t f = 0; f < half; f += 2 * Vec::size()) {
    const int64_t count = std::min<int64_t>(2 * Vec::size(), half - f);
    const auto [logit_sin, logit_cos] = load_deinterleaved(logits + f, count);
    Vec out_sin, out_cos;
    sine_pair_forward(position, Vec::loadu(freq + f / 2), logit_sin, logit_cos, &out_sin, &out_cos);
    store_interleaved(out_sin, out_cos, out + f, count);
  }
}

// Backward of embed_coordinate: writes the logits' gradient and returns d loss / d p. Missing lanes (the tail of
// the row, an odd half's last cos) load as grad 0 and so add exactly 0.
template <typename scalar_t>
acc_type<scalar_t> embed_coordinate_backward(acc_type<scalar_t> p, const acc_type<scalar_t>* freq, int64_t half,
                                             const scalar_t* logits, const scalar_t* grad, scalar_t* grad_logits) {
  using Vec = AccVec<scalar_t>;
  const Vec position(p);
  Vec grad_p(0);
  for (int64_t f = 0; f < half; f += 2 * Vec::size()) {
    const int64_t count = std::min<int64_t>(2 * Vec::size(), half - f);
    const auto [logit_sin, logit_cos] = load_deinterleaved(logits + f, count);
    const auto [grad_sin, grad_cos] = load_deinterleaved(grad + f, count);
    Vec grad_logit_sin, grad_logit_cos;
    grad_p = grad_p + sine_pair_backward(position, Vec::loadu(freq + f / 2), grad_sin, logit_sin, grad_cos,
                                         logit_cos, &grad_logit_sin, &grad_logit_cos);
    store_interleaved(grad_logit_sin, grad_logit_cos, grad_logits + f, count);
  }
  return lane_sum(grad_p);
}

// boxes (B, N, 4) cx cy w h; points (B, N, M, 2) x y; weight_logits (B, N, M, D) -> (B, N, M, D).
at::Tensor pos_embed_forward(const at::Tensor& boxes, const at::Tensor& points, const at::Tensor& weight_logits,
                             double temperature) {
  check_pos_embed_inputs(boxes, points, weight_logits);
  check_cpu_dtype("salient_point_pos_embed", boxes, "boxes_cxcywh");
  const int64_t M = points.size(2), D = weight_logits.size(3), half = D / 2;
  at::Tensor out = at::empty(weight_logits.sizes(), weight_logits.options());
  if (out.numel() == 0) return out;
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  SAMDETR_DISPATCH_CPU_TYPES(boxes.scalar_type(), "samdetr_pos_embed_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const std::vector<acc_t> freq = pair_frequencies<acc_t>(half, temperature);
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel() / D, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = (b * N + n) * M + m
        const scalar_t* bx = box_ptr + (r / M) * 4;
        for (int axis = 0; axis < 2; ++axis) {
          const Axis a = axis_layout(axis, half);
          const acc_t p = point_position<acc_t>(bx[a.centre], bx[a.size], pts_ptr[2 * r + a.point]);
          embed_coordinate(p, freq.data(), half, logit_ptr + r * D + a.feature_offset,
                           out_ptr + r * D + a.feature_offset);
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
  check_grad_output("salient_point_pos_embed_backward", grad_output, weight_logits, boxes, "boxes_cxcywh");
  const int64_t B = boxes.size(0), N = boxes.size(1), M = points.size(2), D = weight_logits.size(3), half = D / 2;
  at::Tensor grad_boxes = at::zeros({B, N, 4}, boxes.options());
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, D}, weight_logits.options());
  if (B * N * M * D == 0) return {grad_boxes, grad_points, grad_logits};
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  SAMDETR_DISPATCH_CPU_TYPES(boxes.scalar_type(), "samdetr_pos_embed_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const std::vector<acc_t> freq = pair_frequencies<acc_t>(half, temperature);
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    scalar_t* gbox_ptr = grad_boxes.mutable_data_ptr<scalar_t>();
    scalar_t* gpts_ptr = grad_points.mutable_data_ptr<scalar_t>();
    scalar_t* glogit_ptr = grad_logits.mutable_data_ptr<scalar_t>();
    // One task per box: the box gradient sums over its M points (in acc_t, cast once) without sharing a write
    // with another task.
    at::parallel_for(0, B * N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t bn = begin; bn < end; ++bn) {
        const scalar_t* bx = box_ptr + bn * 4;
        acc_t grad_box[4] = {0, 0, 0, 0};
        for (int64_t r = bn * M; r < (bn + 1) * M; ++r) {
          for (int axis = 0; axis < 2; ++axis) {
            const Axis a = axis_layout(axis, half);
            const acc_t size = bx[a.size], point = pts_ptr[2 * r + a.point];
            const acc_t p = point_position<acc_t>(bx[a.centre], size, point);
            const int64_t row = r * D + a.feature_offset;
            const acc_t grad_p = embed_coordinate_backward(p, freq.data(), half, logit_ptr + row, grad_ptr + row,
                                                           glogit_ptr + row);
            acc_t grad_centre, grad_size, grad_point;
            point_position_backward(grad_p, size, point, &grad_centre, &grad_size, &grad_point);
            grad_box[a.centre] += grad_centre;
            grad_box[a.size] += grad_size;
            gpts_ptr[2 * r + a.point] = static_cast<scalar_t>(grad_point);
          }
        }
        for (int k = 0; k < 4; ++k) gbox_ptr[bn * 4 + k] = static_cast<scalar_t>(grad_box[k]);
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
