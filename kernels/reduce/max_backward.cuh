// The backward pieces of max/min/amax/amin on CUDA (ops/reduce_max.hpp):
//
//   "scatter_along_dim": max(t, dim) / min(t, dim) send each output gradient to the one element
//     whose index they returned. tensors {grad, idx, g}: grad has the input's shape (written whole),
//     idx (int64) and g are passed with the input's shape and stride 0 along dim d; ints {d}.
//     grad[i] = g[i] where i's coordinate along d equals idx[i], else 0. One thread per element of
//     grad: every element is written exactly once (no separate zero fill, no atomics), and idx/g
//     are read once per element from cache (they are dim d times smaller). Traffic: sizeof(T)
//     written per element.
//
//   "extremum_hit": amax/amin share the gradient among all elements equal to the result.
//     tensors {hit, x, y} (y broadcast to x's shape): hit = 1 where x equals y (a NaN equals a NaN
//     result), else 0 — the generic elementwise kernel with the same functor as the CPU path
//     (math::ExtremumHit).
#pragma once

#include "common/device_types.cuh"
#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/ops/reduce_max.hpp"

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

inline void scatter_along_dim_entry(const KernelCall& call) {
  const TensorArg& grad = call.tensors[0];
  const int d = static_cast<int>(call.ints[0]);
  const std::int64_t n = grad.numel();
  if (n == 0) return;
  std::int64_t inner = 1;
  for (int k = d + 1; k < grad.ndim; ++k) inner *= grad.shape[k];
  const TensorArg all[] = {grad, call.tensors[1], call.tensors[2]};
  const Offsets<3> offsets = make_offsets(all);
  cuda::DeviceGuard guard(grad.device);
  with_floating_type("max/min backward", grad.dtype, [&](auto tag) {
    using T = decltype(tag);
    scatter_along_dim_kernel<<<blocks_for(n, 256), 256, 0, cuda::current_stream(grad.device)>>>(
        n, offsets, inner, grad.shape[d], static_cast<T*>(grad.data), static_cast<const std::int64_t*>(all[1].data),
        static_cast<const T*>(all[2].data));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

inline void extremum_hit_entry(const KernelCall& call) {
  const TensorArg& hit = call.tensors[0];
  cuda::DeviceGuard guard(hit.device);
  with_floating_type("amax/amin backward", hit.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<T, T, T>(math::ExtremumHit{}, cuda::current_stream(hit.device), hit, call.tensors[1], call.tensors[2]);
  });
}

inline const bool max_backward_registered = register_device_kernel("scatter_along_dim", scatter_along_dim_entry) &&
                                            register_device_kernel("extremum_hit", extremum_hit_entry);

}  // namespace kiln::kernels::reduction
