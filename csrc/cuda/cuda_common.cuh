// CUDA-only helpers: vector loads/stores, atomics, thread mapping and launch plumbing. The math itself comes from
// ../samdetr_math.h, the same code the CPU kernels (and so the CPU tests) run.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../checks.h"
#include "../samdetr_math.h"

namespace samdetr {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every kernel here
constexpr int kMaxLanes = 64;  // threads sharing one item's channels (a RoI bin, a point, ...)

// VEC consecutive elements moved as one 16-byte (or smaller) memory transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* p, A (&out)[VEC]) {
  const Vec<T, VEC> x = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = static_cast<A>(x.v[i]);
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_vec(T* p, const A (&in)[VEC]) {
  Vec<T, VEC> x;
#pragma unroll
  for (int i = 0; i < VEC; ++i) x.v[i] = static_cast<T>(in[i]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = x;
}

// acc[0:VEC] += weight * (average of RoI bin (by, bx) over channels c .. c+VEC-1).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_bin(const RoiGeometry<acc_t>& g, int64_t by, int64_t bx, const scalar_t* feat,
                                        int64_t H, int64_t W, int64_t C, int64_t c, acc_t weight, acc_t (&acc)[VEC]) {
  const acc_t w = weight * g.inv_count;
  for_each_bin_sample(g, by, bx, H, W,
                      [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1, acc_t w00, acc_t w01, acc_t w10,
                          acc_t w11) {
                        acc_t v00[VEC], v01[VEC], v10[VEC], v11[VEC];
                        load_vec<VEC>(feat + (y0 * W + x0) * C + c, v00);
                        load_vec<VEC>(feat + (y0 * W + x1) * C + c, v01);
                        load_vec<VEC>(feat + (y1 * W + x0) * C + c, v10);
                        load_vec<VEC>(feat + (y1 * W + x1) * C + c, v11);
#pragma unroll
                        for (int i = 0; i < VEC; ++i)
                          acc[i] += w * (w00 * v00[i] + w01 * v01[i] + w10 * v10[i] + w11 * v11[i]);
                      });
}

// The widest vector (16 bytes and max_elements at most) that divides the channel count and keeps every given
// pointer aligned.
inline int vector_width(int64_t channels, size_t itemsize, std::initializer_list<const void*> pointers,
                        int max_elements) {
  int vec = std::min(static_cast<int>(16 / itemsize), max_elements);
  while (vec > 1) {
    bool ok = channels % vec == 0;
    for (const void* p : pointers) ok = ok && reinterpret_cast<uintptr_t>(p) % (vec * itemsize) == 0;
    if (ok) break;
    vec /= 2;
  }
  return vec;
}

// Calls launch(std::integral_constant<int, VEC>()) with the vector_width of the channels and pointers, VEC at
// most 16 bytes of scalar_t and kMaxElements. Only the widths that can be chosen are instantiated (float64: 1 and
// 2), so no kernel is compiled that can never run.
template <typename scalar_t, int kMaxElements = 8, typename Launch>
inline void dispatch_vector_width(int64_t channels, std::initializer_list<const void*> pointers,
                                  const Launch& launch) {
  constexpr int kMaxVec = std::min(static_cast<int>(16 / sizeof(scalar_t)), kMaxElements);
  const int vec = vector_width(channels, sizeof(scalar_t), pointers, kMaxVec);
  if constexpr (kMaxVec >= 8) {
    if (vec == 8) return launch(std::integral_constant<int, 8>());
  }
  if constexpr (kMaxVec >= 4) {
    if (vec == 4) return launch(std::integral_constant<int, 4>());
  }
  if constexpr (kMaxVec >= 2) {
    if (vec == 2) return launch(std::integral_constant<int, 2>());
  }
  launch(std::integral_constant<int, 1>());
}

// Items of `vectors` channel vectors each share a block: `lanes` threads per item (a power of two, at most
// kMaxLanes; each lane loops over channel vectors lane, lane + lanes, ...), kThreads / lanes items per block.
struct ItemTiling {
  int lanes;
  int items_per_block;
  int64_t blocks;
};

inline ItemTiling item_tiling(int64_t items, int64_t vectors) {
  int lanes = 1;
  while (lanes < vectors && lanes < kMaxLanes) lanes *= 2;
  const int per_block = kThreads / lanes;
  return {lanes, per_block, (items + per_block - 1) / per_block};
}

// Sums v over the `lanes` threads of each item (consecutive threads of a block); every thread of the block
// must call it. Returns the sum in the item's lane 0 (other lanes get partial sums).
template <typename A>
__device__ __forceinline__ A item_sum(A v, A* scratch /* kThreads */, int lanes) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  const int lane = threadIdx.x % lanes;
  for (int stride = lanes / 2; stride > 0; stride /= 2) {
    if (lane < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const A total = scratch[threadIdx.x];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

// The feature gradient is scattered with atomics into an accumulator in the op-math type: the gradient tensor
// itself for float32/float64, a float32 buffer for float16/bfloat16 (cast once at the end). The gradient is
// channels-last, as the fake kernel allocates it, so that its strides agree even for an empty map (torch.compile
// checks them), and allocated with at::empty, which honours the memory format in its TensorOptions: at::zeros
// drops it, and a "channels-last" at::zeros gradient, written by the kernels as dense (B, H, W, C), scrambled the
// float32/float64 feature gradients (found by the first run on a GPU, an H200, 2026-11-26).
struct FeatureGradAccumulator {
  at::Tensor grad;   // (B, C, H, W) channels-last, the op's result
  at::Tensor accum;  // (B, H, W, C) dense, op-math dtype: `grad` permuted when no cast is needed

  FeatureGradAccumulator(int64_t B, int64_t C, int64_t H, int64_t W, const at::TensorOptions& options) {
    const bool low_precision = options.dtype() == at::kHalf || options.dtype() == at::kBFloat16;
    grad = at::empty({B, C, H, W}, options.memory_format(at::MemoryFormat::ChannelsLast));
    accum = low_precision ? at::zeros({B, H, W, C}, options.dtype(at::kFloat)) : grad.permute({0, 2, 3, 1}).zero_();
    // the kernels index accum as dense (B, H, W, C) (an empty map never reaches them)
    TORCH_INTERNAL_ASSERT(accum.numel() == 0 || accum.is_contiguous());
  }

  at::Tensor finish() {
    if (accum.scalar_type() != grad.scalar_type()) grad.copy_(accum.permute({0, 3, 1, 2}));
    return grad;
  }
};

// Scatter atomics make the feature gradient's summation order vary from run to run.
inline void alert_atomic_scatter(const char* op) {
  at::globalContext().alertNotDeterministic(
      std::string("samdetr_ops.") + op +
      " (CUDA): the feature gradient is accumulated with atomicAdd, so its last bits vary between runs. Run "
      "this backward on CPU for bit-identical results, or call torch.use_deterministic_algorithms(True, "
      "warn_only=True) to accept it");
}

}  // namespace cuda
}  // namespace samdetr
