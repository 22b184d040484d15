// The backward pieces of max/min/amax/amin on CUDA (front-end ops/reduce_max.hpp; arguments
// kernels/reduce/args.hpp):
//
//   launch_scatter_along_dim (ScatterAlongDimArgs): max(t, dim) / min(t, dim) send each output
//     gradient to the one element whose index they returned. grad has the input's shape (written
//     whole); idx (int64) and g are passed with the input's shape and stride 0 along dim d.
//     grad[i] = g[i] where i's coordinate along d equals idx[i], else 0. One thread per element of
//     grad: every element is written exactly once (no separate zero fill, no atomics), and idx/g
//     are read once per element from cache (they are dim d times smaller). Traffic: sizeof(T)
//     written per element.
//
//   launch_extremum_hit (ExtremumHitArgs): amax/amin share the gradient among all elements equal
//     to the result. hit = 1 where x equals y (y broadcast to x's shape; a NaN equals a NaN
//     result), else 0 — the generic elementwise kernel (kernels/elementwise/map.cuh) with the same
//     functor as the CPU path (math::ExtremumHit, math/reduce.hpp).
#pragma once

#include <cstdint>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/offsets.cuh"
#include "kiln/kernels/elementwise/map.cuh"
#include "kiln/kernels/reduce/args.hpp"
#include "kiln/math/reduce.hpp"

namespace kiln::kernels::reduction {

template <class T>
__global__ void __launch_bounds__(256)
    scatter_along_dim_kernel(std::int64_t n, Offsets<3> offsets, std::int64_t inner, std::int64_t size, T* grad,
                             const std::int64_t* __restrict__ idx, const T* __restrict__ g) {
  const T zero = store<T>(compute_t<T>(0));
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    std::int64_t off[3];
    offsets.at(i, off);
    const std::int64_t along = (i / inner) % size;  // i's coordinate along d
    grad[off[0]] = along == idx[off[1]] ? g[off[2]] : zero;
  }
}

inline void launch_scatter_along_dim(const ScatterAlongDimArgs& a) {
  const TensorView& grad = a.grad;
  const int d = a.dim;
  const std::int64_t n = grad.numel();
  if (n == 0) return;
  std::int64_t inner = 1;
  for (int k = d + 1; k < grad.ndim; ++k) inner *= grad.shape[k];
  const TensorView all[] = {grad, a.idx, a.g};
  const Offsets<3> offsets = make_offsets(all);
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("max/min backward", grad.dtype, [&](auto tag) {
    using T = decltype(tag);
    scatter_along_dim_kernel<<<blocks_for(n, 256), 256, 0, a.launch.stream>>>(
        n, offsets, inner, grad.shape[d], static_cast<T*>(grad.data), static_cast<const std::int64_t*>(a.idx.data),
        static_cast<const T*>(a.g.data));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

inline void launch_extremum_hit(const ExtremumHitArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("amax/amin backward", a.hit.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, T, T>(math::ExtremumHit{}, a.launch.stream, a.hit, a.x, a.y);
  });
}

inline const bool max_backward_registered =
    register_device_kernel(&launch_scatter_along_dim) && register_device_kernel(&launch_extremum_hit);

}  // namespace kiln::kernels::reduction
