// CUDA kernels of kiln's elementwise unary ops (arguments kernels/elementwise/args.hpp:
// UnaryForwardArgs, UnaryBackwardArgs; front-end ops/unary.hpp):
//   forward   out = op(x)
//   backward  dx = g * op'(saved), saved the forward's output or input
// with the clamp bounds in params (ignored by the other ops). The math is the shared functors of
// kiln/math/unary.hpp (math::Exp, math::SiluGrad, ...), which are __host__ __device__, so the GPU
// evaluates exactly the formula the CPU does, in compute_t<T> (float for bf16/fp16, double for
// double). The loop is the generic map kernel (map.cuh).
//
// Memory traffic per element: forward reads x and writes y (2 x sizeof(T)); backward reads g and
// the saved tensor and writes dx (3 x sizeof(T)). In the time HBM delivers one 16-byte vector per
// thread, an H100 SM can issue a few hundred instructions for it; the float functors (gelu's
// erfcf, the heaviest, is a few dozen) fit well inside that, so the ops run at memory speed. The
// double versions of erfc/exp/tanh cost several times more and may not.
#pragma once

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"
#include "kiln/math/unary.hpp"

namespace kiln::kernels {

inline void launch_unary_forward(const UnaryForwardArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type(detail::unary_name(a.op), a.out.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_unary(a.op, a.params, [&](auto f) { launch_map<T, T>(f, a.launch.stream, a.out, a.x); });
  });
}

inline void launch_unary_backward(const UnaryBackwardArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type(detail::unary_name(a.op), a.dx.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_unary_grad(a.op, a.params, [&](auto f) { launch_map<T, T, T>(f, a.launch.stream, a.dx, a.g, a.saved); });
  });
}

inline const bool unary_registered =
    register_device_kernel(&launch_unary_forward) && register_device_kernel(&launch_unary_backward);

}  // namespace kiln::kernels
