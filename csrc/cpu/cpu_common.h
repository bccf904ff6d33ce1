// CPU-only helpers: the channel loops around the shared per-element math of samdetr_math.h.
// Features are read as channels-last (B, H, W, C) so every inner loop walks contiguous channels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "../checks.h"
#include "../samdetr_math.h"
#include "cpu_vec.h"

namespace samdetr {
namespace cpu {

// Channels per backward task. Backward kernels split work over (batch, channel block) so each task owns a
// disjoint slice of the feature gradient: no atomics, no races, and each channel's sum is accumulated in the same
// order whatever the thread count, so repeated runs are bit-identical.
constexpr int64_t kChannelBlock = 64;

inline void check_cpu_dtype(const char* op, const at::Tensor& t, const char* name) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16,
                   "samdetr_ops.", op, ": the CPU kernel supports float32, float64, float16 and bfloat16 `", name,
                   "`, got ", type);
}

// The dtypes of the CPU kernels: float16 and bfloat16 are read and written in their precision and computed in
// float32 (acc_type in cpu_vec.h), as on CUDA.
#define SAMDETR_DISPATCH_CPU_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// A zero-filled (B, C, H, W) tensor laid out channels-last (at::zeros ignores a memory format in its options).
inline at::Tensor zeros_channels_last(at::IntArrayRef shape, const at::TensorOptions& options) {
  return at::empty(shape, options.memory_format(at::MemoryFormat::ChannelsLast)).zero_();
}

// acc[0 : c1-c0] = average of the RoIAlign bin (bin_y, bin_x) over channels [c0, c1), in acc_t.
// feat: one image of the feature map, channels-last (H, W, C), in its own dtype.
template <typename acc_t, typename scalar_t>
inline void bin_average(const RoiGeometry<acc_t>& g, int64_t bin_y, int64_t bin_x, const scalar_t* feat,
                        int64_t height, int64_t width, int64_t channels, int64_t c0, int64_t c1, acc_t* acc) {
  const int64_t nc = c1 - c0;
  std::fill(acc, acc + nc, acc_t(0));
  for_each_bin_sample(g, bin_y, bin_x, height, width,
                      [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, acc_t w00, acc_t w01, acc_t w10,
                          acc_t w11) {
                        const scalar_t* const taps[4] = {feat + (y0 * width + x0) * channels + c0,
                                                         feat + (y0 * width + x1) * channels + c0,
                                                         feat + (y1 * width + x0) * channels + c0,
                                                         feat + (y1 * width + x1) * channels + c0};
                        const acc_t weights[4] = {w00, w01, w10, w11};
                        add_taps(acc, taps, weights, nc);
                      });
  using Vec = at::vec::Vectorized<acc_t>;
  at::vec::map([&](Vec v) { return v * Vec(g.inv_count); }, acc, acc, nc);
}

// The adjoint of bin_average: spreads grad_bin[0 : c1-c0] (already divided by the sample count) over the bin's
// bilinear samples into grad_feat, channels-last (H, W, C), all in acc_t.
template <typename acc_t>
inline void bin_scatter(const RoiGeometry<acc_t>& g, int64_t bin_y, int64_t bin_x, acc_t* grad_feat,
                        int64_t height, int64_t width, int64_t channels, int64_t c0, int64_t c1,
                        const acc_t* grad_bin) {
  for_each_bin_sample(g, bin_y, bin_x, height, width,
                      [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, acc_t w00, acc_t w01, acc_t w10,
                          acc_t w11) {
                        acc_t* const taps[4] = {grad_feat + (y0 * width + x0) * channels + c0,
                                                grad_feat + (y0 * width + x1) * channels + c0,
                                                grad_feat + (y1 * width + x0) * channels + c0,
                                                grad_feat + (y1 * width + x1) * channels + c0};
                        const acc_t weights[4] = {w00, w01, w10, w11};
                        scatter_taps(taps, weights, grad_bin, c1 - c0);
                      });
}

// The RoI geometry of box (x1, y1, x2, y2), in acc_t whatever the boxes' dtype.
template <typename acc_t, typename scalar_t>
inline RoiGeometry<acc_t> box_geometry(const scalar_t* box, double spatial_scale, PooledSize pooled,
                                       int64_t sampling_ratio, bool aligned) {
  return roi_geometry<acc_t>(box[0], box[1], box[2], box[3], static_cast<acc_t>(spatial_scale), pooled.h, pooled.w,
                             sampling_ratio, aligned);
}

// A gradient accumulated in acc_t: the gradient tensor itself when its dtype is acc_t, else a float32 buffer of
// the same shape and layout, cast once at the end (float16/bfloat16 gradients are summed in float32).
inline at::Tensor accumulation_buffer(const at::Tensor& grad) {
  const at::ScalarType acc = at::toOpMathType(grad.scalar_type());
  return acc == grad.scalar_type() ? grad : at::zeros_like(grad, grad.options().dtype(acc));
}

inline void finish_accumulation(at::Tensor& grad, const at::Tensor& buffer) {
  if (!buffer.is_same(grad)) grad.copy_(buffer);
}

}  // namespace cpu
}  // namespace samdetr
