// CPU kernels of samdetr_ops::semantic_align (forward and backward): float32, float64, float16 and bfloat16
// (computed and accumulated in float32).
//
// Per RoI only the bins that some salient point's bilinear corners touch are computed (at most 4 per point, and
// shared between points); the (B*N, C, S, S) RoI feature tensor of the unfused sequence never exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../checks.h"
#include "cpu_common.h"

namespace samdetr {
namespace cpu {
namespace {

// The grid taps of a RoI's M points and the set of its S_h x S_w bins they touch.
template <typename T>
struct PointTaps {
  PooledSize grid;
  std::vector<GridTaps<T>> taps;  // (M,)
  std::vector<uint8_t> valid;     // (M,) point touches the grid at all
  std::vector<uint8_t> touched;   // (S_h*S_w,) bin read by some point

  PointTaps(int64_t points, PooledSize pooled)
      : grid(pooled), taps(points), valid(points), touched(pooled.h * pooled.w) {}

  // Row-major index of corner (kx, ky) of point tap t.
  int64_t bin(const GridTaps<T>& t, int kx, int ky) const { return (t.y0 + ky) * grid.w + t.x0 + kx; }

  // points: (M, 2) normalised (x, y) of one RoI, in any floating dtype (the taps are computed in T).
  template <typename scalar_t>
  void compute(const scalar_t* points) {
    std::fill(touched.begin(), touched.end(), 0);
    for (size_t m = 0; m < taps.size(); ++m) {
      GridTaps<T>& t = taps[m];
      valid[m] = grid_taps(static_cast<T>(points[2 * m]), static_cast<T>(points[2 * m + 1]), grid.w, grid.h, &t);
      if (!valid[m]) continue;
      for (int ky = 0; ky < 2; ++ky)
        for (int kx = 0; kx < 2; ++kx)
          if (t.in_y[ky] && t.in_x[kx]) touched[bin(t, kx, ky)] = 1;
    }
  }
};

// The on-grid corners of one point: grid_sample weight, its derivatives w.r.t. the normalised x and y, and the
// corner's bin index.
template <typename T>
struct Corners {
  int count = 0;
  T w[4], w_dx[4], w_dy[4];
  int64_t bin[4];

  Corners(const PointTaps<T>& pt, const GridTaps<T>& t) {
    for (int ky = 0; ky < 2; ++ky) {
      for (int kx = 0; kx < 2; ++kx) {
        if (!(t.in_y[ky] && t.in_x[kx])) continue;
        w[count] = t.wy[ky] * t.wx[kx];
        w_dx[count] = t.wy[ky] * t.dwx[kx];
        w_dy[count] = t.dwy[ky] * t.wx[kx];
        bin[count++] = pt.bin(t, kx, ky);
      }
    }
  }
};

// features (B, C, H, W); boxes (B, N, 4); points (B, N, M, 2); weight_logits (B, N, M, C) -> (B, N, M, C).
at::Tensor semantic_align_forward(const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& points,
                                  const at::Tensor& weight_logits, at::IntArrayRef output_size, double spatial_scale,
                                  int64_t sampling_ratio, bool aligned) {
  const PooledSize pooled =
      check_semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio);
  check_cpu_dtype("semantic_align", features, "features");
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1), M = points.size(2), SW = pooled.w, bins_per_roi = pooled.h * pooled.w;
  at::Tensor out = at::zeros({B, N, M, C}, features.options());
  if (out.numel() == 0 || H == 0 || W == 0) return out;
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  SAMDETR_DISPATCH_CPU_TYPES(features.scalar_type(), "samdetr_semantic_align_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const scalar_t* feat_ptr = feat.const_data_ptr<scalar_t>();
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
      PointTaps<acc_t> pt(M, pooled);
      std::vector<acc_t> bins(bins_per_roi * C);  // (S_h*S_w, C): RoI features, touched bins only
      for (int64_t roi = begin; roi < end; ++roi) {
        const int64_t b = roi / N;
        const auto g = box_geometry<acc_t>(box_ptr + roi * 4, spatial_scale, pooled, sampling_ratio, aligned);
        pt.compute(pts_ptr + roi * M * 2);
        const scalar_t* feat_b = feat_ptr + b * H * W * C;
        for (int64_t bin = 0; bin < bins_per_roi; ++bin)
          if (pt.touched[bin]) bin_average(g, bin / SW, bin % SW, feat_b, H, W, C, 0, C, bins.data() + bin * C);
        for (int64_t m = 0; m < M; ++m) {
          if (!pt.valid[m]) continue;  // output stays 0, as grid_sample's zero padding gives
          const Corners<acc_t> corners(pt, pt.taps[m]);
          const int64_t row = (roi * M + m) * C;
          for (int64_t c = 0; c < C; c += Vec::size()) {  // a vector of channels: sample, then reweight
            const int64_t count = std::min<int64_t>(Vec::size(), C - c);
            Vec q(0);
            for (int k = 0; k < corners.count; ++k)
              q = at::vec::fmadd(Vec(corners.w[k]), Vec::loadu(bins.data() + corners.bin[k] * C + c, count), q);
            store_vec(reweight(q, load_vec(logit_ptr + row + c, count)), out_ptr + row + c, count);
          }
        }
      }
    });
  });
  return out;
}

// Returns (grad_features channels-last (B, C, H, W), grad_points (B, N, M, 2), grad_weight_logits (B, N, M, C)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_align_backward(
    const at::Tensor& grad_output, const at::Tensor& features, const at::Tensor& boxes, const at::Tensor& points,
    const at::Tensor& weight_logits, at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio,
    bool aligned, std::array<bool, 3> output_mask) {
  const PooledSize pooled =
      check_semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio);
  check_cpu_dtype("semantic_align_backward", features, "features");
  check_grad_output("semantic_align_backward", grad_output, weight_logits, features, "features");
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t N = boxes.size(1), M = points.size(2), SW = pooled.w, bins_per_roi = pooled.h * pooled.w;
  const bool need_feat = output_mask[0], need_points = output_mask[1], need_logits = output_mask[2];
  const bool need_values = need_points || need_logits;  // the sampled values q and their derivatives
  at::Tensor grad_features =
      zeros_channels_last({B, C, H, W}, features.options());
  at::Tensor grad_points = at::zeros({B, N, M, 2}, points.options());
  at::Tensor grad_logits = at::zeros({B, N, M, C}, weight_logits.options());
  if (grad_logits.numel() == 0 || H == 0 || W == 0) return {grad_features, grad_points, grad_logits};
  if (!(need_feat || need_points || need_logits)) return {grad_features, grad_points, grad_logits};
  const at::Tensor feat = features.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor box = boxes.contiguous(), pts = points.contiguous(), logits = weight_logits.contiguous();
  const at::Tensor grad = grad_output.contiguous();
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::Tensor grad_feat_acc = accumulation_buffer(grad_features);
  // Per channel block partial point gradients (in acc_t), summed over blocks afterwards in a fixed order.
  at::Tensor point_partials =
      at::zeros({blocks, B, N, M, 2}, points.options().dtype(at::toOpMathType(points.scalar_type())));
  SAMDETR_DISPATCH_CPU_TYPES(features.scalar_type(), "samdetr_semantic_align_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    using Vec = at::vec::Vectorized<acc_t>;
    const scalar_t* feat_ptr = feat.const_data_ptr<scalar_t>();
    const scalar_t* box_ptr = box.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = pts.const_data_ptr<scalar_t>();
    const scalar_t* logit_ptr = logits.const_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
    acc_t* gfeat_ptr = grad_feat_acc.mutable_data_ptr<acc_t>();
    scalar_t* glogit_ptr = grad_logits.mutable_data_ptr<scalar_t>();
    acc_t* gpoint_ptr = point_partials.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t CB = kChannelBlock;
      PointTaps<acc_t> pt(M, pooled);
      std::vector<acc_t> bins(bins_per_roi * CB);       // (S_h*S_w, CB) RoI features of touched bins
      std::vector<acc_t> grad_bins(bins_per_roi * CB);  // (S_h*S_w, CB) their gradient
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, block = task % blocks;
        const int64_t c0 = block * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock), nc = c1 - c0;
        const scalar_t* feat_b = feat_ptr + b * H * W * C;
        acc_t* gfeat_b = gfeat_ptr + b * H * W * C;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t roi = b * N + n;
          const auto g = box_geometry<acc_t>(box_ptr + roi * 4, spatial_scale, pooled, sampling_ratio, aligned);
          pt.compute(pts_ptr + roi * M * 2);
          for (int64_t bin = 0; bin < bins_per_roi; ++bin) {
            if (!pt.touched[bin]) continue;
            if (need_values) bin_average(g, bin / SW, bin % SW, feat_b, H, W, C, c0, c1, bins.data() + bin * CB);
            if (need_feat) std::fill_n(grad_bins.data() + bin * CB, nc, acc_t(0));
          }
          for (int64_t m = 0; m < M; ++m) {
            if (!pt.valid[m]) continue;  // no corner on the grid: every gradient is 0
            const Corners<acc_t> corners(pt, pt.taps[m]);
            const int64_t row = (roi * M + m) * C + c0;
            Vec grad_x(0), grad_y(0);  // d loss / d point, per lane
            for (int64_t c = 0; c < nc; c += Vec::size()) {  // a vector of channels; missing lanes load as 0
              const int64_t count = std::min<int64_t>(Vec::size(), nc - c);
              Vec q(0), dq_dx(0), dq_dy(0);
              if (need_values) {
                for (int k = 0; k < corners.count; ++k) {
                  const Vec v = Vec::loadu(bins.data() + corners.bin[k] * CB + c, count);
                  q = at::vec::fmadd(Vec(corners.w[k]), v, q);
                  dq_dx = at::vec::fmadd(Vec(corners.w_dx[k]), v, dq_dx);
                  dq_dy = at::vec::fmadd(Vec(corners.w_dy[k]), v, dq_dy);
                }
              }
              Vec grad_logit;
              const Vec grad_q = reweight_backward(load_vec(grad_ptr + row + c, count), q,
                                                   load_vec(logit_ptr + row + c, count), &grad_logit);
              if (need_logits) store_vec(grad_logit, glogit_ptr + row + c, count);
              grad_x = at::vec::fmadd(grad_q, dq_dx, grad_x);
              grad_y = at::vec::fmadd(grad_q, dq_dy, grad_y);
              if (need_feat) {
                for (int k = 0; k < corners.count; ++k) {
                  acc_t* gb = grad_bins.data() + corners.bin[k] * CB + c;
                  at::vec::fmadd(Vec(corners.w[k]), grad_q, Vec::loadu(gb, count)).store(gb, static_cast<int>(count));
                }
              }
            }
            if (need_points) {
              acc_t* gp = gpoint_ptr + ((block * B * N + roi) * M + m) * 2;
              gp[0] = lane_sum(grad_x);
              gp[1] = lane_sum(grad_y);
            }
          }
          if (need_feat && g.grid_h > 0 && g.grid_w > 0) {
            for (int64_t bin = 0; bin < bins_per_roi; ++bin) {
              if (!pt.touched[bin]) continue;
              acc_t* gb = grad_bins.data() + bin * CB;
              for (int64_t c = 0; c < nc; ++c) gb[c] *= g.inv_count;
              bin_scatter(g, bin / SW, bin % SW, gfeat_b, H, W, C, c0, c1, gb);
            }
          }
        }
      }
    });
  });
  finish_accumulation(grad_features, grad_feat_acc);
  if (need_points) grad_points = point_partials.sum(0).to(points.scalar_type());
  return {grad_features, grad_points, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(samdetr_ops, CPU, m) {
  m.impl("semantic_align", &semantic_align_forward);
  m.impl("semantic_align_backward", &semantic_align_backward);
}

}  // namespace cpu
}  // namespace samdetr
