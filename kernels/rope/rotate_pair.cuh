// One pair of rope's rotation on CUDA, shared by the rope kernel (rope.cuh) and the kernels that
// rotate on the way elsewhere (decode_attention/latent_write.cuh: MLA's rope key into the cache),
// so that both round exactly alike:
//   y0 = x0 cos - x1 sin,   y1 = x0 sin + x1 cos
// with the products rounded on their own (never contracted into an FMA), as the CPU computes them,
// then rounded once to the storage type.
#pragma once

#include "kiln/kernels/common/element.cuh"

namespace kiln::kernels::rope {

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <class T, class C>
__device__ __forceinline__ void rotate_pair(C x0, C x1, C c, C s, T& y0, T& y1) {
  y0 = store<T>(mul_rn(x0, c) - mul_rn(x1, s));
  y1 = store<T>(mul_rn(x0, s) + mul_rn(x1, c));
}

}  // namespace kiln::kernels::rope
