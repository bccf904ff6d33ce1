// CPU kernels of samdetr_ops::roi_align (forward and backward): float32, float64, float16 and bfloat16 (computed
// and accumulated in float32).
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

// features (B, C, H, W), any strides; boxes (B, N, 4) x1 y1 x2 y2 -> (B, N, C, S_h, S_w).
at::Tensor roi_align_forward(const at::Tensor& features, const at::Tensor& boxes, at::IntArrayRef output_size,
                             double spatial_scale, int64_t sampling_ratio, bool aligned) {
  const PooledSize pooled = check_roi_inputs("roi_align", features, boxes, output_size, sampling_ratio);
  check_cpu_dtype("roi_align", features, "features");
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1), SW = pooled.w, bins_per_roi = pooled.h * pooled.w;
  // Every element is written below (empty boxes give zero bins): no zero fill unless nothing is computed.
  at::Tensor out = at::empty({B, N, C, pooled.h, pooled.w}, features.options());
  if (out.numel() == 0 || H == 0 || W == 0) return out.zero_();
  // No copy when features already are channels-last, e.g. a (B, H*W, C) token tensor viewed as (B, C, H, W).
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous();
  SAMDETR_DISPATCH_CPU_TYPES(features.scalar_type(), "samdetr_roi_align_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* feat_ptr = feat.const_data_ptr<scalar_t>();
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> bins(bins_per_roi * C);  // (S_h*S_w, C): one RoI, channels innermost as the features
      for (int64_t roi = begin; roi < end; ++roi) {
        const int64_t b = roi / N;
        const auto g = box_geometry<acc_t>(box_ptr + roi * 4, spatial_scale, pooled, sampling_ratio, aligned);
        const scalar_t* feat_b = feat_ptr + b * H * W * C;
        for (int64_t bin = 0; bin < bins_per_roi; ++bin)
          bin_average(g, bin / SW, bin % SW, feat_b, H, W, C, 0, C, bins.data() + bin * C);
        // transpose into the (C, S_h, S_w) output of this RoI, writing contiguously
        scalar_t* o = out_ptr + roi * C * bins_per_roi;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t bin = 0; bin < bins_per_roi; ++bin)
            o[c * bins_per_roi + bin] = static_cast<scalar_t>(bins[bin * C + c]);
      }
    });
  });
  return out;
}

// grad_output (B, N, C, S_h, S_w) -> grad_features (B, C, H, W), channels-last.
at::Tensor roi_align_backward(const at::Tensor& grad_output, const at::Tensor& boxes, c10::SymIntArrayRef feature_shape,
                              at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio,
                              bool aligned) {
  PooledSize pooled;
  const at::IntArrayRef shape =
      check_roi_align_backward_inputs(grad_output, boxes, feature_shape, output_size, &pooled);
  const int64_t B = shape[0], C = shape[1], H = shape[2], W = shape[3], N = boxes.size(1);
  const int64_t SW = pooled.w, bins_per_roi = pooled.h * pooled.w;
  check_cpu_dtype("roi_align_backward", grad_output, "grad_output");
  at::Tensor grad_features =
      zeros_channels_last({B, C, H, W}, grad_output.options());
  if (grad_features.numel() == 0 || N == 0) return grad_features;
  // (B, N, C, S_h, S_w) read in place: a task gathers its channel block of a bin at stride S_h*S_w, and the
  // block's bins of one RoI (a few KB) stay in cache across the bin loop, so no channels-last copy is needed.
  const at::Tensor grad_c = grad_output.contiguous();
  const at::Tensor box = boxes.contiguous();
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::Tensor grad_acc = accumulation_buffer(grad_features);
  SAMDETR_DISPATCH_CPU_TYPES(grad_output.scalar_type(), "samdetr_roi_align_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* grad_ptr = grad_c.const_data_ptr<scalar_t>();
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    acc_t* gfeat_ptr = grad_acc.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> grad_bin(kChannelBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks;
        const int64_t c0 = (task % blocks) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
        acc_t* gfeat_b = gfeat_ptr + b * H * W * C;
        for (int64_t n = 0; n < N; ++n) {
          const auto g =
              box_geometry<acc_t>(box_ptr + (b * N + n) * 4, spatial_scale, pooled, sampling_ratio, aligned);
          if (g.grid_h == 0 || g.grid_w == 0) continue;
          for (int64_t bin = 0; bin < bins_per_roi; ++bin) {
            const scalar_t* src = grad_ptr + ((b * N + n) * C + c0) * bins_per_roi + bin;
            for (int64_t c = 0; c < c1 - c0; ++c)
              grad_bin[c] = static_cast<acc_t>(src[c * bins_per_roi]) * g.inv_count;
            bin_scatter(g, bin / SW, bin % SW, gfeat_b, H, W, C, c0, c1, grad_bin.data());
          }
        }
      }
    });
  });
  finish_accumulation(grad_features, grad_acc);
  return grad_features;
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CPU, m) {
  m.impl("roi_align", &roi_align_forward);
  m.impl("roi_align_backward", &roi_align_backward);
}

}  // namespace cpu
}  // namespace samdetr
