// Element access on the device: loads that widen kiln's storage types (bf16, fp16, fp8) to their
// compute type with the hardware conversion instructions, stores that narrow with round to nearest
// even (fp8 saturating), bit for bit what kiln's host types do (core/low_precision.hpp), and the
// 16-byte vector type of vectorised loops.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

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

// Rounds a double once to T: bf16/fp16 straight from the double (as kiln's host conversion does),
// not through float, which would round twice. Results accumulated in double (sums, losses) are
// stored with it.
template <class T>
__device__ __forceinline__ T round_from_double(double v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return T::from_bits(__bfloat16_as_ushort(__double2bfloat16(v)));
  } else if constexpr (std::is_same_v<T, fp16>) {
    return T::from_bits(__half_as_ushort(__double2half(v)));
  } else {
    return static_cast<T>(v);
  }
}

// V elements of T moved as one aligned access (16 bytes when sizeof(T) * V == 16).
template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

}  // namespace kiln::kernels
