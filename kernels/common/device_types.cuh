// Device-side helpers shared by every kernel family: element loads/stores that widen kiln's
// storage types to the compute type with the hardware conversion instructions, the offset
// arithmetic for strided operands, and launch-size helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kiln/core/dispatch.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// Widening load: bf16/fp16/fp8 through the hardware converts (bit-identical to kiln's host types).
template <class T>
__device__ __forceinline__ compute_t<T> load(const T& x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return __bfloat162float(__ushort_as_bfloat16(x.bits));
  } else if constexpr (std::is_same_v<T, fp16>) {
    return __half2float(__ushort_as_half(x.bits));
  } else if constexpr (std::is_same_v<T, fp8_e4m3> || std::is_same_v<T, fp8_e5m2>) {
    constexpr __nv_fp8_interpretation_t kind = std::is_same_v<T, fp8_e4m3> ? __NV_E4M3 : __NV_E5M2;
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(x.bits, kind)));
  } else {
    return x;
  }
}

// Narrowing store with round-to-nearest-even (fp8: saturating, as the host types).
template <class T, class C>
__device__ __forceinline__ T store(C v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return T::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v))));
  } else if constexpr (std::is_same_v<T, fp16>) {
    return T::from_bits(__half_as_ushort(__float2half_rn(static_cast<float>(v))));
  } else if constexpr (std::is_same_v<T, fp8_e4m3>) {
    return T::from_bits(__nv_cvt_float_to_fp8(static_cast<float>(v), __NV_SATFINITE, __NV_E4M3));
  } else if constexpr (std::is_same_v<T, fp8_e5m2>) {
    return T::from_bits(__nv_cvt_float_to_fp8(static_cast<float>(v), __NV_SATFINITE, __NV_E5M2));
  } else {
    return static_cast<T>(v);
  }
}

// Element offsets of N operands that share one shape (broadcast operands carry stride 0), from a
// row-major linear index. Passed by value as a kernel argument.
template <int N>
struct Offsets {
  int ndim;
  std::int64_t shape[kMaxDims];
  std::int64_t strides[N][kMaxDims];

  __device__ __forceinline__ void at(std::int64_t linear, std::int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const std::int64_t i = linear % shape[d];
      linear /= shape[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
  }
};

template <int N>
Offsets<N> make_offsets(const TensorArg (&args)[N]) {
  Offsets<N> o{};
  o.ndim = args[0].ndim;
  for (int d = 0; d < o.ndim; ++d) {
    o.shape[d] = args[0].shape[d];
    for (int k = 0; k < N; ++k) o.strides[k][d] = args[k].strides[d];
  }
  return o;
}

inline unsigned blocks_for(std::int64_t n, int threads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 1048576 ? 1048576 : b));  // grid-stride beyond 2^20 blocks
}

}  // namespace kiln::kernels
