// CUDA entry for kiln's broadcasting binary ops (ops/binary.hpp): the same math functors as the
// CPU path, run by the generic map kernel. KernelCall: tensors {out, a, b} (a and b broadcast to
// out's shape), ints {BinaryOp}.
#pragma once

#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/ops/binary.hpp"

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

inline void binary_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  with_floating_type("binary", out.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_binary(static_cast<BinaryOp>(call.ints[0]), [&](auto f) {
      launch_map<T, T, T>(OnCompute<decltype(f)>{f}, cuda::current_stream(out.device), out, call.tensors[1],
                          call.tensors[2]);
    });
  });
}

inline const bool binary_registered = register_device_kernel("binary", binary_entry);

}  // namespace kiln::kernels
