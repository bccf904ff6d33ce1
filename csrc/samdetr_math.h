// Per-element math shared by the CPU and CUDA kernels of samdetr_ops.
//
// Everything in this header is __host__ __device__ so that the CPU tests exercise exactly the code the GPU runs:
// RoIAlign bin geometry (torchvision's rules, aligned or not, adaptive sampling count), the RoIAlign bilinear
// taps, grid_sample's bilinear taps over the RoI grid (align_corners=False, zero padding), the sigmoid
// reweighting and the sinusoidal position embedding (these two also on CPU SIMD vectors, see Elementary). Only
// thread mapping, vector loads and atomics differ between the back-ends.
//
// Robustness: torchvision's kernels cast float sample positions and counts straight to int, which is undefined
// behaviour (and in practice an out-of-bounds read) for NaN/Inf or absurd boxes. Here every such cast is guarded:
// non-finite positions contribute nothing, sample counts saturate, and the sample loops visit only the samples
// whose position can land on the map, so even a box a million pixels wide costs O(H x W) work, not O(box area).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SAMDETR_HD __host__ __device__ __forceinline__
#else
#define SAMDETR_HD inline
#endif

// Float overloads of <cmath> on the host (std::), CUDA's overloads in device code (::).
#if defined(__CUDA_ARCH__)
#define SAMDETR_FN(fn) ::fn
#else
#define SAMDETR_FN(fn) std::fn
#endif

namespace samdetr {

// Upper bound on the adaptive sampling count along one axis of one bin. torchvision keeps it in an `int` and
// multiplies the two axes, which overflows for boxes wider than ~300k pixels; we saturate instead. Boxes below
// that size get torchvision's count exactly.
constexpr int64_t kMaxSamplesPerAxis = int64_t(1) << 24;

// ---------------------------------------------------------------------------------------------------------------
// RoIAlign geometry of one box (torchvision.ops.roi_align semantics).
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
struct RoiGeometry {
  T start_y, start_x;      // top-left corner of bin (0, 0) in feature-map pixels
  T bin_h, bin_w;          // bin size in pixels (may be <= 0 for degenerate boxes when aligned=True)
  int64_t grid_h, grid_w;  // bilinear samples per bin along y and x (0 for empty/invalid boxes)
  T inv_count;             // 1 / max(grid_h * grid_w, 1): each sample's share of the bin average
};

// ceil(extent / bins) as a sample count, saturated and with NaN/negative mapped to 0. Computed in T, as
// torchvision does, so a float32 box gets the same count as torchvision's float32 kernel.
template <typename T>
SAMDETR_HD int64_t adaptive_sample_count(T extent, int64_t bins) {
  const T c = SAMDETR_FN(ceil)(extent / static_cast<T>(bins));
  if (!(c > T(0))) return 0;  // also catches NaN
  if (c >= static_cast<T>(kMaxSamplesPerAxis)) return kMaxSamplesPerAxis;
  return static_cast<int64_t>(c);
}

// box: x1, y1, x2, y2 in input pixels (features are `spatial_scale` times smaller), pooled to
// pooled_h x pooled_w bins.
template <typename T>
SAMDETR_HD RoiGeometry<T> roi_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                       int64_t sampling_ratio, bool aligned) {
  RoiGeometry<T> g;
  const T offset = aligned ? T(0.5) : T(0);
  g.start_x = x1 * spatial_scale - offset;
  g.start_y = y1 * spatial_scale - offset;
  T roi_w = x2 * spatial_scale - offset - g.start_x;
  T roi_h = y2 * spatial_scale - offset - g.start_y;
  // Tested before the legacy clamp below, which would turn a NaN extent into 1 (and a NaN box into a 1x1 read).
  const bool finite = SAMDETR_FN(isfinite)(g.start_x) && SAMDETR_FN(isfinite)(g.start_y) &&
                      SAMDETR_FN(isfinite)(roi_w) && SAMDETR_FN(isfinite)(roi_h);
  if (!aligned) {  // legacy behaviour: force malformed boxes to be 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  if (sampling_ratio > 0) {
    g.grid_h = g.grid_w = sampling_ratio;
  } else {
    g.grid_h = adaptive_sample_count(roi_h, pooled_h);
    g.grid_w = adaptive_sample_count(roi_w, pooled_w);
  }
  if (!finite) g.grid_h = g.grid_w = 0;  // a NaN/Inf box reads nothing and yields zeros
  const int64_t count = g.grid_h * g.grid_w;
  g.inv_count = T(1) / static_cast<T>(count > 1 ? count : 1);
  return g;
}

// Position of sample `i` (0 <= i < grid) of bin `bin_index` along one axis, written exactly as torchvision does
// so results agree to the last bit of the position.
template <typename T>
SAMDETR_HD T sample_position(T start, int64_t bin_index, T bin_size, int64_t i, int64_t grid) {
  return start + static_cast<T>(bin_index) * bin_size +
         static_cast<T>(static_cast<T>(i) + T(0.5)) * bin_size / static_cast<T>(grid);
}

// A sample at `pos` contributes to the map iff -1 <= pos <= size (torchvision's rule; NaN never does).
template <typename T>
SAMDETR_HD bool sample_on_map(T pos, int64_t size) {
  return pos >= T(-1) && pos <= static_cast<T>(size);
}

// The half-open range [first, last) of sample indices of one bin along one axis that can land on the map.
// sample_position is monotone in i (each rounding step is), so for bin_size > 0 the valid samples form one
// contiguous run that two binary searches find; callers still test each sample with sample_on_map. This bounds
// the work for huge boxes without changing any result.
template <typename T>
SAMDETR_HD void sample_range(T start, int64_t bin_index, T bin_size, int64_t grid, int64_t size, int64_t* first,
                             int64_t* last) {
  *first = 0;
  *last = grid;
  if (!(bin_size > T(0)) || grid <= 2) return;
  // first i with pos(i) >= -1
  int64_t lo = 0, hi = grid;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sample_position(start, bin_index, bin_size, mid, grid) >= T(-1)) hi = mid; else lo = mid + 1;
  }
  *first = lo;
  // first i with pos(i) > size
  hi = grid;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sample_position(start, bin_index, bin_size, mid, grid) > static_cast<T>(size)) hi = mid; else lo = mid + 1;
  }
  *last = lo;
}

// One axis of RoIAlign's bilinear interpolation: the two neighbouring pixel indices and their weights.
template <typename T>
struct AxisTaps {
  int64_t lo, hi;
  T w_lo, w_hi;
};

// torchvision's bilinear_interpolate, one axis at a time (its 2-D weights are products of these). Returns false
// when the sample is off the map; positions in [-1, 0] clamp to pixel 0 and in [size-1, size] to pixel size-1.
// Requires size >= 1 (callers return zeros for empty maps).
template <typename T>
SAMDETR_HD bool axis_taps(T pos, int64_t size, AxisTaps<T>* t) {
  if (!sample_on_map(pos, size)) return false;
  if (pos <= T(0)) pos = T(0);
  t->lo = static_cast<int64_t>(pos);
  if (t->lo >= size - 1) {
    t->lo = t->hi = size - 1;
    pos = static_cast<T>(t->lo);
  } else {
    t->hi = t->lo + 1;
  }
  const T l = pos - static_cast<T>(t->lo);
  t->w_hi = l;
  t->w_lo = T(1) - l;
  return true;
}

// Calls visit(y_lo, y_hi, x_lo, x_hi, w_ll, w_lh, w_hl, w_hh) once per on-map bilinear sample of RoI bin
// (bin_y, bin_x), where w_ab weighs pixel (y_a, x_b). The caller scales by g.inv_count to get the bin average.
template <typename T, typename Visit>
SAMDETR_HD void for_each_bin_sample(const RoiGeometry<T>& g, int64_t bin_y, int64_t bin_x, int64_t height,
                                    int64_t width, Visit&& visit) {
  int64_t iy_first, iy_last, ix_first, ix_last;
  sample_range(g.start_y, bin_y, g.bin_h, g.grid_h, height, &iy_first, &iy_last);
  sample_range(g.start_x, bin_x, g.bin_w, g.grid_w, width, &ix_first, &ix_last);
  for (int64_t iy = iy_first; iy < iy_last; ++iy) {
    AxisTaps<T> ty;
    if (!axis_taps(sample_position(g.start_y, bin_y, g.bin_h, iy, g.grid_h), height, &ty)) continue;
    for (int64_t ix = ix_first; ix < ix_last; ++ix) {
      AxisTaps<T> tx;
      if (!axis_taps(sample_position(g.start_x, bin_x, g.bin_w, ix, g.grid_w), width, &tx)) continue;
      visit(ty.lo, ty.hi, tx.lo, tx.hi, ty.w_lo * tx.w_lo, ty.w_lo * tx.w_hi, ty.w_hi * tx.w_lo,
            ty.w_hi * tx.w_hi);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// grid_sample over the pooled_h x pooled_w RoI grid (mode=bilinear, padding_mode=zeros, align_corners=False).
// ---------------------------------------------------------------------------------------------------------------
// The four corners (x0|x1) x (y0|y1) with their weights; a corner off the grid has weight 0 and in_grid false.
// dw_dx / dw_dy are the weights' derivatives with respect to the normalised point coordinates (chain rule through
// the unnormalisation, d ix / d x = width / 2, d iy / d y = height / 2), for the point gradient.
template <typename T>
struct GridTaps {
  int64_t x0, y0;      // x1 = x0 + 1, y1 = y0 + 1
  bool in_x[2], in_y[2];
  T wx[2], wy[2];      // 1-D weights: wx[0] for column x0, wx[1] for x1
  T dwx[2], dwy[2];    // their derivatives w.r.t. the normalised x / y
};

// (px, py) normalised over a grid of `width` columns and `height` rows. Returns false when no corner lies on the
// grid (including NaN/Inf points, which contribute nothing).
template <typename T>
SAMDETR_HD bool grid_taps(T px, T py, int64_t width, int64_t height, GridTaps<T>* t) {
  const T sx = static_cast<T>(width), sy = static_cast<T>(height);
  // grid_sampler_unnormalize with align_corners=False
  const T ix = ((px + T(1)) * sx - T(1)) / T(2);
  const T iy = ((py + T(1)) * sy - T(1)) / T(2);
  // Outside (-2, size + 1) no corner can be on the grid; this also keeps floor() inside int64 range.
  if (!(ix > T(-2) && ix < sx + T(1) && iy > T(-2) && iy < sy + T(1))) return false;
  const T fx = SAMDETR_FN(floor)(ix), fy = SAMDETR_FN(floor)(iy);
  t->x0 = static_cast<int64_t>(fx);
  t->y0 = static_cast<int64_t>(fy);
  const T ax = ix - fx, ay = iy - fy;  // fractional parts
  t->wx[0] = T(1) - ax;
  t->wx[1] = ax;
  t->wy[0] = T(1) - ay;
  t->wy[1] = ay;
  t->dwx[0] = -sx / T(2);
  t->dwx[1] = sx / T(2);
  t->dwy[0] = -sy / T(2);
  t->dwy[1] = sy / T(2);
  for (int k = 0; k < 2; ++k) {
    t->in_x[k] = t->x0 + k >= 0 && t->x0 + k < width;
    t->in_y[k] = t->y0 + k >= 0 && t->y0 + k < height;
  }
  return (t->in_x[0] || t->in_x[1]) && (t->in_y[0] || t->in_y[1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Elementary functions of the formulas below. The templates take a scalar (host or device) or, on the CPU, a SIMD
// vector: cpu/cpu_vec.h specialises Elementary for at::vec::Vectorized (SLEEF sin/cos/exp), so one copy of each
// formula serves the CUDA threads, the scalar CPU code and the vectorised CPU loops. V(1) etc. broadcast.
// ---------------------------------------------------------------------------------------------------------------
template <typename V>
struct Elementary {
  using Scalar = V;
  static SAMDETR_HD V sin(V x) { return SAMDETR_FN(sin)(x); }
  static SAMDETR_HD V cos(V x) { return SAMDETR_FN(cos)(x); }
  static SAMDETR_HD V exp(V x) { return SAMDETR_FN(exp)(x); }
  static SAMDETR_HD void sincos(V x, V* s, V* c) {
    *s = sin(x);
    *c = cos(x);
  }
};

template <typename V>
SAMDETR_HD V sigmoid(V x) {
  return V(1) / (V(1) + Elementary<V>::exp(-x));
}

// Reweighting by a sigmoid gate, out = value * sigmoid(logit): the last step of semantic_align and of the position
// embedding. Its backward writes d loss / d logit and returns d loss / d value.
template <typename V>
SAMDETR_HD V reweight(V value, V logit) {
  return value * sigmoid(logit);
}

template <typename V>
SAMDETR_HD V reweight_backward(V grad_out, V value, V logit, V* grad_logit) {
  const V s = sigmoid(logit);
  *grad_logit = grad_out * value * s * (V(1) - s);
  return grad_out * s;
}

// ---------------------------------------------------------------------------------------------------------------
// Sinusoidal position embedding of salient points (Conditional-DETR's gen_sineembed_for_position layout).
// ---------------------------------------------------------------------------------------------------------------
// A salient point's position along one axis: box centre + 0.5 * box size * point (point in [-1, 1]), and the
// adjoint: d loss / d (centre, size, point) from d loss / d position.
template <typename T>
SAMDETR_HD T point_position(T centre, T size, T point) {
  return centre + T(0.5) * size * point;
}

template <typename T>
SAMDETR_HD void point_position_backward(T grad_position, T size, T point, T* grad_centre, T* grad_size,
                                        T* grad_point) {
  *grad_centre = grad_position;
  *grad_size = grad_position * T(0.5) * point;
  *grad_point = grad_position * T(0.5) * size;
}

// Feature k (0 <= k < half) of one coordinate p: t = (p * 2 pi) / temperature^(2 (k // 2) / half);
// sin(t) for even k, cos(t) for odd k. Features 2j and 2j+1 share the same t, so kernels walk pairs: one sin/cos
// evaluation gives both values (sin t, cos t) and both derivatives (cos t, -sin t) * d t / d p.
// The pair's frequency 1 / temperature^(2 j / half) depends only on j: kernels compute it once per pair.
template <typename T>
SAMDETR_HD T sine_pair_frequency(int64_t pair, int64_t half, T temperature) {
  return T(1) / SAMDETR_FN(pow)(temperature, static_cast<T>(2 * pair) / static_cast<T>(half));
}

// Writes sin t and cos t, and returns d t / d p, for t = (p * 2 pi) * frequency.
template <typename V>
SAMDETR_HD V sine_pair(V p, V frequency, V* sin_t, V* cos_t) {
  const V two_pi = V(static_cast<typename Elementary<V>::Scalar>(6.283185307179586476925286766559));
  const V t = (p * two_pi) * frequency;
  Elementary<V>::sincos(t, sin_t, cos_t);
  return two_pi * frequency;
}

// Features 2j (sin t) and 2j+1 (cos t) of coordinate p, each reweighted by sigmoid of its logit. When half is odd
// the last pair has no cos feature: callers pass any finite logit and drop *out_cos.
template <typename V>
SAMDETR_HD void sine_pair_forward(V p, V frequency, V logit_sin, V logit_cos, V* out_sin, V* out_cos) {
  V sin_t, cos_t;
  sine_pair(p, frequency, &sin_t, &cos_t);
  *out_sin = reweight(sin_t, logit_sin);
  *out_cos = reweight(cos_t, logit_cos);
}

// Backward of sine_pair_forward: writes the two logits' gradients and returns the pair's share of d loss / d p.
// A missing cos feature (odd half) passes grad_cos = 0 (and a finite logit_cos): it then adds exactly 0.
template <typename V>
SAMDETR_HD V sine_pair_backward(V p, V frequency, V grad_sin, V logit_sin, V grad_cos, V logit_cos,
                                V* grad_logit_sin, V* grad_logit_cos) {
  V sin_t, cos_t;
  const V dt_dp = sine_pair(p, frequency, &sin_t, &cos_t);
  const V grad_value_sin = reweight_backward(grad_sin, sin_t, logit_sin, grad_logit_sin);
  const V grad_value_cos = reweight_backward(grad_cos, cos_t, logit_cos, grad_logit_cos);
  return (grad_value_sin * cos_t - grad_value_cos * sin_t) * dt_dp;
}

// ---------------------------------------------------------------------------------------------------------------
// Multi-scale deformable attention: one sampling location on one level's H x W map (Deformable-DETR semantics).
// ---------------------------------------------------------------------------------------------------------------
// The on-map corners of location (x, y) in [0, 1] of a width x height map, sampled bilinearly at
// (x * width - 0.5, y * height - 0.5) with zeros outside: grid_sample (align_corners=False) of the grid coordinate
// 2 x - 1, computed that way so the position rounds as in Deformable-DETR's PyTorch sequence. Corner k reads map
// row index[k] (= row * width + column) with weight w[k]; w_dx[k], w_dy[k] are that weight's derivatives w.r.t. x
// and y. NaN/Inf locations, and those with no corner on the map, have count 0.
template <typename T>
struct LevelCorners {
  int count = 0;
  T w[4], w_dx[4], w_dy[4];
  int64_t index[4];
};

template <typename T>
SAMDETR_HD LevelCorners<T> level_corners(T x, T y, int64_t width, int64_t height) {
  LevelCorners<T> c;
  GridTaps<T> t;
  if (!grid_taps(T(2) * x - T(1), T(2) * y - T(1), width, height, &t)) return c;
  for (int ky = 0; ky < 2; ++ky) {
    for (int kx = 0; kx < 2; ++kx) {
      if (!(t.in_y[ky] && t.in_x[kx])) continue;
      c.w[c.count] = t.wy[ky] * t.wx[kx];
      // d/dx = 2 d/d(grid coordinate), the grid coordinate being 2 x - 1
      c.w_dx[c.count] = T(2) * t.wy[ky] * t.dwx[kx];
      c.w_dy[c.count] = T(2) * t.dwy[ky] * t.wx[kx];
      c.index[c.count++] = (t.y0 + ky) * width + t.x0 + kx;
    }
  }
  return c;
}

}  // namespace samdetr
