// CUDA entries for kiln's elementwise unary ops (ops/unary.hpp):
//   "unary"          tensors {out, x},       reals {lo, hi}, ints {UnaryOp}
//   "unary_backward" tensors {dx, g, saved}, reals {lo, hi}, ints {UnaryOp}
// The math is the op header's own functors (math::Exp, math::SiluGrad, ...), which are
// __host__ __device__, so the GPU evaluates exactly the formula the CPU does, in compute_t<T>
// (float for bf16/fp16, double for double). The loop is the generic map kernel (map.cuh).
//
// Memory traffic per element: forward reads x and writes y (2 x sizeof(T)); backward reads g and
// the saved tensor and writes dx (3 x sizeof(T)). In the time HBM delivers one 16-byte vector per
// thread, an H100 SM can issue a few hundred instructions for it; the float functors (gelu's
// erfcf, the heaviest, is a few dozen) fit well inside that, so the ops run at memory speed. The
// double versions of erfc/exp/tanh cost several times more and may not.
#pragma once

#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/ops/unary.hpp"

namespace kiln::kernels {

inline UnaryArgs unary_args(const KernelCall& call) {
  UnaryArgs args;
  args.lo = call.reals[0];
  args.hi = call.reals[1];
  return args;
}

inline void unary_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const auto op = static_cast<UnaryOp>(call.ints[0]);
  with_floating_type(detail::unary_name(op), out.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_unary(op, unary_args(call), [&](auto f) {
      launch_map<T, T>(f, cuda::current_stream(out.device), out, call.tensors[1]);
    });
  });
}

inline void unary_backward_entry(const KernelCall& call) {
  const TensorArg& dx = call.tensors[0];
  const auto op = static_cast<UnaryOp>(call.ints[0]);
  with_floating_type(detail::unary_name(op), dx.dtype, [&](auto tag) {
    using T = decltype(tag);
    math::with_unary_grad(op, unary_args(call), [&](auto f) {
      launch_map<T, T, T>(f, cuda::current_stream(dx.device), dx, call.tensors[1], call.tensors[2]);
    });
  });
}

inline const bool unary_registered =
    register_device_kernel("unary", unary_entry) && register_device_kernel("unary_backward", unary_backward_entry);

}  // namespace kiln::kernels
