// CPU-only helpers: the channel loops around the shared per-element math of samdetr_math.h.
// Features are read as channels-last (B, H, W, C) so every inner loop walks contiguous channels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "../checks.h"
#include "../samdetr_math.h"

namespace samdetr {
namespace cpu {

// Channels per backward task. Backward kernels split work over (batch, channel block) so each task owns a
// disjoint slice of the feature gradient: no atomics, no races, and each channel's sum is accumulated in the same
// order whatever the thread count, so repeated runs are bit-identical.
constexpr int64_t kChannelBlock = 32;

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

// acc[0 : c1-c0] = average of the RoIAlign bin (bin_y, bin_x) over channels [c0, c1).
// feat: one image of the feature map, channels-last (H, W, C).
template <typename T>
inline void bin_average(const RoiGeometry<T>& g, int64_t bin_y, int64_t bin_x, const T* feat, int64_t height,
                        int64_t width, int64_t channels, int64_t c0, int64_t c1, T* acc) {
  const int64_t nc = c1 - c0;
  std::fill(acc, acc + nc, T(0));
  for_each_bin_sample(g, bin_y, bin_x, height, width,
                      [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, T w00, T w01, T w10, T w11) {
                        const T* p00 = feat + (y0 * width + x0) * channels + c0;
                        const T* p01 = feat + (y0 * width + x1) * channels + c0;
                        const T* p10 = feat + (y1 * width + x0) * channels + c0;
                        const T* p11 = feat + (y1 * width + x1) * channels + c0;
                        for (int64_t c = 0; c < nc; ++c)
                          acc[c] += w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
                      });
  for (int64_t c = 0; c < nc; ++c) acc[c] *= g.inv_count;
}

// The adjoint of bin_average: spreads grad_bin[0 : c1-c0] (already divided by the sample count) over the bin's
// bilinear samples into grad_feat, channels-last (H, W, C).
template <typename T>
inline void bin_scatter(const RoiGeometry<T>& g, int64_t bin_y, int64_t bin_x, T* grad_feat, int64_t height,
                        int64_t width, int64_t channels, int64_t c0, int64_t c1, const T* grad_bin) {
  const int64_t nc = c1 - c0;
  for_each_bin_sample(g, bin_y, bin_x, height, width,
                      [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, T w00, T w01, T w10, T w11) {
                        T* p00 = grad_feat + (y0 * width + x0) * channels + c0;
                        T* p01 = grad_feat + (y0 * width + x1) * channels + c0;
                        T* p10 = grad_feat + (y1 * width + x0) * channels + c0;
                        T* p11 = grad_feat + (y1 * width + x1) * channels + c0;
                        for (int64_t c = 0; c < nc; ++c) p00[c] += w00 * grad_bin[c];
                        for (int64_t c = 0; c < nc; ++c) p01[c] += w01 * grad_bin[c];
                        for (int64_t c = 0; c < nc; ++c) p10[c] += w10 * grad_bin[c];
                        for (int64_t c = 0; c < nc; ++c) p11[c] += w11 * grad_bin[c];
                      });
}

template <typename T>
inline RoiGeometry<T> box_geometry(const T* box, double spatial_scale, PooledSize pooled, int64_t sampling_ratio,
                                   bool aligned) {
  return roi_geometry<T>(box[0], box[1], box[2], box[3], static_cast<T>(spatial_scale), pooled.h, pooled.w,
                         sampling_ratio, aligned);
}

}  // namespace cpu
}  // namespace samdetr
