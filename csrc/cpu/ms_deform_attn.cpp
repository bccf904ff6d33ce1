// CPU kernels of samdetr_ops::ms_deform_attn (forward and backward): float32, float64, float16 and bfloat16
// (computed and accumulated in float32).
//
// value (B, S, heads, D) is read in place: one (level row, head) is D contiguous channels, the SIMD vector of every
// inner loop. The forward runs in parallel over queries. The backward runs in parallel over (batch, head, level):
// each task walks every query in order and owns the rows of its level and head in the value gradient, and the
// location and weight gradients of its (head, level), so nothing is shared, there are no atomics, and the result
// is bit-identical run to run whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "cpu_common.h"

namespace samdetr {
namespace cpu {
namespace {

constexpr const char* kOp = "ms_deform_attn";

// The sizes of one call: value (B, S, heads, D), locations (B, Q, heads, L, P, 2).
struct MsdaSizes {
  int64_t B, S, heads, D, Q, L, P;
  std::vector<std::array<int64_t, 3>> levels;  // (H, W, first row) per level

  MsdaSizes(const at::Tensor& value, const at::Tensor& locations, std::vector<std::array<int64_t, 3>> lv)
      : B(value.size(0)), S(value.size(1)), heads(value.size(2)), D(value.size(3)), Q(locations.size(1)),
        L(locations.size(3)), P(locations.size(4)), levels(std::move(lv)) {}

  int64_t row_stride() const { return heads * D; }  // elements between consecutive rows of one head's values
};

// acc[0:D] += sum over the corners of weight * corner weight * value row, in acc_t.
// rows: the level's first row of this (batch, head), rows `row_stride` apart.
template <typename scalar_t, typename acc_t>
inline void add_sample(const LevelCorners<acc_t>& corners, acc_t weight, const scalar_t* rows, int64_t row_stride,
                       int64_t D, acc_t* acc) {
  using Vec = at::vec::Vectorized<acc_t>;
  for (int64_t c = 0; c < D; c += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), D - c);
    Vec sum = Vec::loadu(acc + c, count);
    for (int k = 0; k < corners.count; ++k)
      sum = at::vec::fmadd(Vec(weight * corners.w[k]), load_vec(rows + corners.index[k] * row_stride + c, count), sum);
    sum.store(acc + c, static_cast<int>(count));
  }
}

// dst[0:n] = src[0:n] rounded once to scalar_t; src[0:n] = dst's values in acc_t.
template <typename scalar_t, typename acc_t>
inline void store_channels(const acc_t* src, scalar_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

template <typename scalar_t, typename acc_t>
inline void load_channels(const scalar_t* src, acc_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// out[0:D] = the attention of one (query, head) over its L * P samples (sample0: its first). NV > 0: D is NV SIMD
// vectors, summed in registers (the common case, D = 32 float32 channels: 4 AVX2 vectors); NV = 0: any D, summed in
// acc[0:D].
template <int NV, typename scalar_t, typename acc_t>
inline void attend(const MsdaSizes& n, int64_t b, int64_t h, int64_t sample0, const scalar_t* val_ptr,
                   const scalar_t* loc_ptr, const scalar_t* wgt_ptr, scalar_t* out, acc_t* acc) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec regs[NV > 0 ? NV : 1];
  for (int i = 0; i < NV; ++i) regs[i] = Vec(0);
  if constexpr (NV == 0) std::fill(acc, acc + n.D, acc_t(0));
  for (int64_t l = 0; l < n.L; ++l) {
    const auto [H, W, first_row] = n.levels[l];
    const scalar_t* rows = val_ptr + ((b * n.S + first_row) * n.heads + h) * n.D;
    for (int64_t p = 0; p < n.P; ++p) {
      const int64_t s = sample0 + l * n.P + p;
      const auto corners = level_corners<acc_t>(loc_ptr[2 * s], loc_ptr[2 * s + 1], W, H);
      const acc_t weight = static_cast<acc_t>(wgt_ptr[s]);
      if constexpr (NV == 0) {
        if (corners.count > 0) add_sample(corners, weight, rows, n.row_stride(), n.D, acc);
      } else {
        for (int k = 0; k < corners.count; ++k) {
          const scalar_t* row = rows + corners.index[k] * n.row_stride();
          const Vec scale(weight * corners.w[k]);
          for (int i = 0; i < NV; ++i) regs[i] = at::vec::fmadd(scale, load_vec(row + i * V, V), regs[i]);
        }
      }
    }
  }
  if constexpr (NV == 0) {
    store_channels(acc, out, n.D);
  } else {
    for (int i = 0; i < NV; ++i) store_vec(regs[i], out + i * V, V);
  }
}

// value (B, S, heads, D), locations (B, Q, heads, L, P, 2), weights (B, Q, heads, L, P) -> out (B, Q, heads * D).
at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(kOp, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_cpu_dtype(kOp, value, "value");
  const MsdaSizes n(value, sampling_locations,
                    check_ms_deform_attn_levels(kOp, value, spatial_shapes, level_start_index));
  at::Tensor out = at::zeros({n.B, n.Q, n.heads * n.D}, value.options());
  if (out.numel() == 0 || n.L * n.P == 0) return out;
  const at::Tensor val = value.contiguous(), loc = sampling_locations.contiguous();
  const at::Tensor wgt = attention_weights.contiguous();
  SAMDETR_DISPATCH_CPU_TYPES(value.scalar_type(), "samdetr_ms_deform_attn_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* val_ptr = val.const_data_ptr<scalar_t>();
    const scalar_t* loc_ptr = loc.const_data_ptr<scalar_t>();
    const scalar_t* wgt_ptr = wgt.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    constexpr int64_t V = at::vec::Vectorized<acc_t>::size();
    const int64_t vectors = n.D % V == 0 ? n.D / V : 0;
    at::parallel_for(0, n.B * n.Q, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(n.D);
      for (int64_t bq = begin; bq < end; ++bq) {
        for (int64_t h = 0; h < n.heads; ++h) {
          const int64_t item = bq * n.heads + h;  // (query, head)
          const auto run = [&](auto nv) {
            attend<decltype(nv)::value>(n, bq / n.Q, h, item * n.L * n.P, val_ptr, loc_ptr, wgt_ptr,
                                        out_ptr + item * n.D, acc.data());
          };
          switch (vectors) {
            case 1: run(std::integral_constant<int, 1>()); break;
            case 2: run(std::integral_constant<int, 2>()); break;
            case 4: run(std::integral_constant<int, 4>()); break;
            case 8: run(std::integral_constant<int, 8>()); break;
            default: run(std::integral_constant<int, 0>());
          }
        }
      }
    });
  });
  return out;
}

// The adjoint of one sample for the location and weight gradients: returns (d loss / d weight, d loss / d x,
// d loss / d y) given grad[0:D] = d loss / d out of its (query, head), in acc_t.
template <typename scalar_t, typename acc_t>
inline std::array<acc_t, 3> sample_backward(const LevelCorners<acc_t>& corners, acc_t weight, const scalar_t* rows,
                                            int64_t row_stride, int64_t D, const acc_t* grad) {
  using Vec = at::vec::Vectorized<acc_t>;
  Vec dot_value(0), dot_x(0), dot_y(0);  // per lane: grad . sampled value, and . its derivatives in x, y
  for (int64_t c = 0; c < D; c += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), D - c);  // missing lanes load as 0
    Vec sampled(0), d_x(0), d_y(0);
    for (int k = 0; k < corners.count; ++k) {
      const Vec v = load_vec(rows + corners.index[k] * row_stride + c, count);
      sampled = at::vec::fmadd(Vec(corners.w[k]), v, sampled);
      d_x = at::vec::fmadd(Vec(corners.w_dx[k]), v, d_x);
      d_y = at::vec::fmadd(Vec(corners.w_dy[k]), v, d_y);
    }
    const Vec g = Vec::loadu(grad + c, count);
    dot_value = at::vec::fmadd(g, sampled, dot_value);
    dot_x = at::vec::fmadd(g, d_x, dot_x);
    dot_y = at::vec::fmadd(g, d_y, dot_y);
  }
  return {lane_sum(dot_value), weight * lane_sum(dot_x), weight * lane_sum(dot_y)};
}

// grad_rows[corner rows, 0:D] += weight * corner weight * grad[0:D], all in acc_t (rows `row_stride` apart).
template <typename acc_t>
inline void scatter_sample(const LevelCorners<acc_t>& corners, acc_t weight, acc_t* grad_rows, int64_t row_stride,
                           int64_t D, const acc_t* grad) {
  using Vec = at::vec::Vectorized<acc_t>;
  for (int k = 0; k < corners.count; ++k) {
    acc_t* row = grad_rows + corners.index[k] * row_stride;
    const Vec scale(weight * corners.w[k]);
    for (int64_t c = 0; c < D; c += Vec::size()) {
      const int64_t count = std::min<int64_t>(Vec::size(), D - c);
      at::vec::fmadd(scale, Vec::loadu(grad + c, count), Vec::loadu(row + c, count))
          .store(row + c, static_cast<int>(count));
    }
  }
}

// Returns (grad_value (B, S, heads, D), grad_sampling_locations (B, Q, heads, L, P, 2), grad_attention_weights
// (B, Q, heads, L, P)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    std::array<bool, 3> output_mask) {
  const char* op = "ms_deform_attn_backward";
  check_ms_deform_attn_inputs(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_cpu_dtype(op, value, "value");
  const MsdaSizes n(value, sampling_locations, check_ms_deform_attn_levels(op, value, spatial_shapes,
                                                                           level_start_index));
  check_ms_deform_attn_grad_output(op, grad_output, value, n.B, n.Q);
  const bool need_value = output_mask[0], need_locations = output_mask[1], need_weights = output_mask[2];
  at::Tensor grad_value = at::zeros_like(value, at::MemoryFormat::Contiguous);
  at::Tensor grad_locations = at::zeros_like(sampling_locations, at::MemoryFormat::Contiguous);
  at::Tensor grad_weights = at::zeros_like(attention_weights, at::MemoryFormat::Contiguous);
  if (grad_output.numel() == 0 || n.L * n.P == 0 || !(need_value || need_locations || need_weights))
    return {grad_value, grad_locations, grad_weights};
  const at::Tensor val = value.contiguous(), loc = sampling_locations.contiguous();
  const at::Tensor wgt = attention_weights.contiguous(), grad = grad_output.contiguous();
  at::Tensor grad_value_acc = accumulation_buffer(grad_value);
  SAMDETR_DISPATCH_CPU_TYPES(value.scalar_type(), "samdetr_ms_deform_attn_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* val_ptr = val.const_data_ptr<scalar_t>();
    const scalar_t* loc_ptr = loc.const_data_ptr<scalar_t>();
    const scalar_t* wgt_ptr = wgt.const_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    acc_t* gval_ptr = grad_value_acc.mutable_data_ptr<acc_t>();
    scalar_t* gloc_ptr = grad_locations.mutable_data_ptr<scalar_t>();
    scalar_t* gwgt_ptr = grad_weights.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n.B * n.heads * n.L, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> grad_q(n.D);  // d loss / d out of one (query, head), in acc_t
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (n.heads * n.L), h = task / n.L % n.heads, l = task % n.L;
        const auto [H, W, first_row] = n.levels[l];
        const int64_t row0 = (b * n.S + first_row) * n.heads + h;  // (batch, level's first row, head) in rows of D
        const scalar_t* rows = val_ptr + row0 * n.D;
        acc_t* grad_rows = gval_ptr + row0 * n.D;
        for (int64_t q = 0; q < n.Q; ++q) {
          const int64_t bqh = (b * n.Q + q) * n.heads + h;
          load_channels(grad_ptr + bqh * n.D, grad_q.data(), n.D);
          for (int64_t p = 0; p < n.P; ++p) {
            const int64_t s = (bqh * n.L + l) * n.P + p;
            const auto corners = level_corners<acc_t>(loc_ptr[2 * s], loc_ptr[2 * s + 1], W, H);
            if (corners.count == 0) continue;  // reads nothing: every gradient of this sample is 0
            const acc_t weight = static_cast<acc_t>(wgt_ptr[s]);
            if (need_locations || need_weights) {
              const auto [d_weight, d_x, d_y] =
                  sample_backward(corners, weight, rows, n.row_stride(), n.D, grad_q.data());
              gwgt_ptr[s] = static_cast<scalar_t>(d_weight);
              gloc_ptr[2 * s] = static_cast<scalar_t>(d_x);
              gloc_ptr[2 * s + 1] = static_cast<scalar_t>(d_y);
            }
            if (need_value) scatter_sample(corners, weight, grad_rows, n.row_stride(), n.D, grad_q.data());
          }
        }
      }
    });
  });
  finish_accumulation(grad_value, grad_value_acc);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward);
}

}  // namespace cpu
}  // namespace samdetr
