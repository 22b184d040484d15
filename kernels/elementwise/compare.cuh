// CUDA entries for comparisons and logical ops (ops/compare.hpp), on the generic map kernel:
//   "compare"        tensors {out (bool), a, b}, ints {CompareOp}
//   "compare_scalar" tensors {out (bool), a},    reals {s}, ints {CompareOp}
//   "logical"        tensors {out, a, b} or {out, a} (logical_not), all bool, ints {LogicalOp}
// The comparison itself is math::compare / math::logical from the op header, shared with the CPU.
//
// Memory traffic per element: the inputs (sizeof(T) each) plus one byte of output. The op is a
// kernel argument rather than a template parameter: one kernel per element type instead of six,
// and the switch on it is uniform across the grid, so it costs a few instructions per element
// with memory the bottleneck. Vector width follows the widest operand (map.cuh), so for float
// inputs a thread reads 16 bytes of each input and writes 4 bytes of bools.
#pragma once

#include "elementwise/map.cuh"
#include "kiln/backend/cuda/stream.hpp"
#include "kiln/ops/compare.hpp"

namespace kiln::kernels {

struct CompareTensors {
  CompareOp op;
  template <class C>
  __device__ bool operator()(C x, C y) const {
    return math::compare(op, x, y);
  }
};

// Floating tensors compare in their compute type with the scalar (exact there: the front-end
// rounded it to the tensor's type); integer and bool tensors compare in double.
template <class T>
struct CompareScalar {
  using C = std::conditional_t<is_floating<T>, compute_t<T>, double>;
  CompareOp op;
  C s;
  template <class X>
  __device__ bool operator()(X x) const {
    return math::compare(op, static_cast<C>(x), s);
  }
};

struct Logical {
  LogicalOp op;
  __device__ bool operator()(bool a, bool b) const { return math::logical(op, a, b); }
  __device__ bool operator()(bool a) const { return math::logical(op, a, false); }
};

inline void compare_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const auto op = static_cast<CompareOp>(call.ints[0]);
  with_any_type(detail::compare_name(op), call.tensors[1].dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<bool, T, T>(CompareTensors{op}, cuda::current_stream(out.device), out, call.tensors[1], call.tensors[2]);
  });
}

inline void compare_scalar_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const auto op = static_cast<CompareOp>(call.ints[0]);
  with_any_type(detail::compare_name(op), call.tensors[1].dtype, [&](auto tag) {
    using T = decltype(tag);
    using S = CompareScalar<T>;
    launch_map<bool, T>(S{op, static_cast<typename S::C>(call.reals[0])}, cuda::current_stream(out.device), out,
                        call.tensors[1]);
  });
}

inline void logical_entry(const KernelCall& call) {
  const TensorArg& out = call.tensors[0];
  const Logical f{static_cast<LogicalOp>(call.ints[0])};
  if (call.tensors.size() == 2) {
    launch_map<bool, bool>(f, cuda::current_stream(out.device), out, call.tensors[1]);
  } else {
    launch_map<bool, bool, bool>(f, cuda::current_stream(out.device), out, call.tensors[1], call.tensors[2]);
  }
}

inline const bool compare_registered = register_device_kernel("compare", compare_entry) &&
                                       register_device_kernel("compare_scalar", compare_scalar_entry) &&
                                       register_device_kernel("logical", logical_entry);

}  // namespace kiln::kernels
