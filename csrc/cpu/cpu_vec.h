// SIMD vectors for the CPU kernels: at::vec::Vectorized<acc_t> as a value type of samdetr_math.h's formulas, and
// loads/stores between a tensor's dtype and acc_t vectors.
//
// acc_t = at::opmath_type<scalar_t>: float for float32, float16 and bfloat16 (read and written in their own
// precision, computed in float32), double for float64. The vector ISA is fixed at compile time by CPU_CAPABILITY
// (setup.py: AVX2 + FMA when the building machine has them, else ATen's portable DEFAULT, whose Vectorized is a
// plain array and whose sin/cos/exp are libm's); with AVX2, sin/cos/exp are SLEEF's vectorised routines, the
// ones torch's own CPU kernels (and so the reference sequences) use.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <utility>

#include "../samdetr_math.h"

namespace samdetr {

template <typename T>
struct Elementary<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  using Scalar = T;
  static V sin(const V& x) { return x.sin(); }
  static V cos(const V& x) { return x.cos(); }
  // float: ATen's exp_u20 (a degree-5 polynomial, within 20 ulp ~ 1.2e-6 relative, about half the cost of SLEEF's
  // 1-ulp expf8: the sigmoid's exp is the position embedding's largest cost after sincos), with NaN passed through
  // as SLEEF does; double: SLEEF's 1-ulp exp.
  static V exp(const V& x) {
    if constexpr (std::is_same_v<T, float>) {
      return V::blendv(x.exp_u20(), x, x.isnan());
    } else {
      return x.exp();
    }
  }
  // One SLEEF call for both (a shared argument reduction): the position embedding's features come in sin/cos
  // pairs of one argument. float: 3.5-ulp (as Vectorized<float>::sin/cos), double: 1-ulp.
  static void sincos(const V& x, V* s, V* c) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
    if constexpr (std::is_same_v<T, float>) {
      const Sleef___m256_2 r = Sleef_sincosf8_u35(x);
      *s = r.x;
      *c = r.y;
      return;
    } else if constexpr (std::is_same_v<T, double>) {
      const Sleef___m256d_2 r = Sleef_sincosd4_u10(x);
      *s = r.x;
      *c = r.y;
      return;
    }
#endif
    *s = x.sin();
    *c = x.cos();
  }
};

namespace cpu {

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

template <typename scalar_t>
using AccVec = at::vec::Vectorized<acc_type<scalar_t>>;

template <typename scalar_t>
constexpr bool is_reduced_float = !std::is_same_v<scalar_t, acc_type<scalar_t>>;

// count (<= AccVec::size()) elements of src as one acc_t vector; missing lanes are 0.
template <typename scalar_t>
inline AccVec<scalar_t> load_vec(const scalar_t* src, int64_t count) {
  using Vec = AccVec<scalar_t>;
  if constexpr (!is_reduced_float<scalar_t>) {
    return count == Vec::size() ? Vec::loadu(src) : Vec::loadu(src, count);
  } else {
    Vec v;
    if (count == Vec::size()) {
      at::vec::load_to_float(src, v);
      return v;
    }
    acc_type<scalar_t> buf[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) buf[i] = static_cast<acc_type<scalar_t>>(src[i]);
    return Vec::loadu(buf);
  }
}

// Writes the first count (<= AccVec::size()) lanes of v to dst, rounded once to scalar_t.
template <typename scalar_t>
inline void store_vec(const AccVec<scalar_t>& v, scalar_t* dst, int64_t count) {
  using Vec = AccVec<scalar_t>;
  if constexpr (!is_reduced_float<scalar_t>) {
    v.store(dst, static_cast<int>(count));
  } else {
    acc_type<scalar_t> buf[Vec::size()];
    v.store(buf);
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<scalar_t>(buf[i]);
  }
}

// count (<= 2 * AccVec::size()) interleaved elements e0 o0 e1 o1 ... of src as the vectors (even, odd); missing
// lanes are 0.
template <typename scalar_t>
inline std::pair<AccVec<scalar_t>, AccVec<scalar_t>> load_deinterleaved(const scalar_t* src, int64_t count) {
  using Vec = AccVec<scalar_t>;
  const int64_t n = Vec::size();
  Vec a, b;
  if (count == 2 * n) {
    if constexpr (is_reduced_float<scalar_t>) {
      at::vec::load_to_float(src, a, b);
    } else {
      a = Vec::loadu(src);
      b = Vec::loadu(src + n);
    }
  } else {
    a = load_vec(src, std::min(count, n));
    b = load_vec(src + n, std::max<int64_t>(count - n, 0));
  }
  return at::vec::deinterleave2(a, b);
}

// The inverse: writes the first count (<= 2 * AccVec::size()) elements of the interleaving of (even, odd).
template <typename scalar_t>
inline void store_interleaved(const AccVec<scalar_t>& even, const AccVec<scalar_t>& odd, scalar_t* dst,
                              int64_t count) {
  const int64_t n = AccVec<scalar_t>::size();
  const auto [a, b] = at::vec::interleave2(even, odd);
  store_vec(a, dst, std::min(count, n));
  if (count > n) store_vec(b, dst + n, count - n);
}

// acc[0 : n] += sum over k of weights[k] * taps[k][0 : n]: one bilinear sample's four taps (features in scalar_t,
// the sum in acc_t). Taps may alias (a sample clamped to the border).
template <typename scalar_t>
inline void add_taps(acc_type<scalar_t>* acc, const scalar_t* const taps[4], const acc_type<scalar_t> weights[4],
                     int64_t n) {
  using Vec = AccVec<scalar_t>;
  for (int64_t c = 0; c < n; c += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - c);
    Vec sum = Vec::loadu(acc + c, count);
    for (int k = 0; k < 4; ++k) sum = at::vec::fmadd(Vec(weights[k]), load_vec(taps[k] + c, count), sum);
    sum.store(acc + c, static_cast<int>(count));
  }
}

// The adjoint: taps[k][0 : n] += weights[k] * grad[0 : n], all in acc_t. Aliasing taps are updated one after the
// other, so each gets its share.
template <typename acc_t>
inline void scatter_taps(acc_t* const taps[4], const acc_t weights[4], const acc_t* grad, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  for (int64_t c = 0; c < n; c += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - c);
    const Vec g = Vec::loadu(grad + c, count);
    for (int k = 0; k < 4; ++k)
      at::vec::fmadd(Vec(weights[k]), g, Vec::loadu(taps[k] + c, count)).store(taps[k] + c, static_cast<int>(count));
  }
}

// The lanes of v summed in lane order (a fixed order: bit-identical run to run).
template <typename T>
inline T lane_sum(const at::vec::Vectorized<T>& v) {
  T buf[at::vec::Vectorized<T>::size()];
  v.store(buf);
  T sum = 0;
  for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) sum += buf[i];
  return sum;
}

}  // namespace cpu
}  // namespace samdetr
