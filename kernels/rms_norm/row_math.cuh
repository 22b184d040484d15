// The per-row arithmetic of RMSNorm's forward on CUDA, shared by the RMSNorm kernels
// (rms_norm.cuh) and the kernels that normalise rows on the way elsewhere (decode_attention/
// latent_write.cuh: MLA's latent rows into the cache), so that both round exactly alike.
#pragma once

#include <type_traits>

#include "kiln/kernels/common/element.cuh"

namespace kiln::kernels::rms_norm {

// 1 / sqrt(mean + eps) from the row's sum of squares; IEEE-rounded sqrt and division. (The mean
// multiplies by 1 / D rather than dividing: a division's slow path is a call that costs spills.)
template <class C>
__device__ __forceinline__ C inverse_rms(C squares, C inv_d, C eps) {
  const C ms = squares * inv_d + eps;
  if constexpr (std::is_same_v<C, float>) {
    return 1.0f / sqrtf(ms);
  } else {
    return 1.0 / ::sqrt(ms);
  }
}

// y for one element: as the CPU op, low-precision types round x * r before the weight.
template <class T>
__device__ __forceinline__ T normalized(compute_t<T> x, compute_t<T> r, bool has_w, compute_t<T> w) {
  if constexpr (is_low_precision<T>) {
    const T n = store<T>(x * r);
    return has_w ? store<T>(load(n) * w) : n;
  } else {
    return has_w ? x * r * w : x * r;
  }
}

}  // namespace kiln::kernels::rms_norm
