// CUDA kernel of kiln's broadcasting binary ops (arguments kernels/elementwise/args.hpp:
// BinaryArgs; front-end ops/binary.hpp): out = a (op) b with a and b broadcast to out's shape.
// The same math functors as the CPU path (kiln/math/binary.hpp), run by the generic map kernel.
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"
#include "kiln/math/binary.hpp"

namespace kiln::kernels {

// Wraps a math functor so the kernel calls it on compute_t<T> values.
template <class F>
struct OnCompute {
  F f;
  template <class... C>
  __device__ auto operator()(C... x) const {
    return f(x...);
  }
};

inline void launch_binary(const BinaryArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("binary", a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_binary(a.op, [&](auto f) {
      launch_map<T, T, T>(OnCompute<decltype(f)>{f}, a.launch.stream, a.out, a.a, a.b);
    });
  });
}

inline const bool binary_registered = register_device_kernel(&launch_binary);

}  // namespace kiln::kernels
