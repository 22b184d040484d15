// CUDA kernels of comparisons and logical ops (arguments kernels/elementwise/args.hpp:
// CompareArgs, CompareScalarArgs, LogicalArgs; front-end ops/compare.hpp), on the generic map
// kernel:
//   compare         out (bool) = a (op) b, a and b broadcast to out's shape
//   compare scalar  out (bool) = a (op) s
//   logical         out = a (op) b over bools, or not a (b absent)
// The comparison itself is math::compare / math::logical from kiln/math/compare.hpp, shared with
// the CPU.
//
// Memory traffic per element: the inputs (sizeof(T) each) plus one byte of output. The op is a
// kernel argument rather than a template parameter: one kernel per element type instead of six,
// and the switch on it is uniform across the grid, so it costs a few instructions per element
// with memory the bottleneck. Vector width follows the widest operand (map.cuh), so for float
// inputs a thread reads 16 bytes of each input and writes 4 bytes of bools.
#pragma once

#include <type_traits>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/kernels/elementwise/map.cuh"
#include "kiln/math/compare.hpp"

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

inline void launch_compare(const CompareArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type(detail::compare_name(a.op), a.a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_map<bool, T, T>(CompareTensors{a.op}, a.launch.stream, a.out, a.a, a.b);
  });
}

inline void launch_compare_scalar(const CompareScalarArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  with_any_type(detail::compare_name(a.op), a.a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using S = CompareScalar<T>;
    launch_map<bool, T>(S{a.op, static_cast<typename S::C>(a.s)}, a.launch.stream, a.out, a.a);
  });
}

inline void launch_logical(const LogicalArgs& a) {
  cuda::DeviceGuard guard(a.launch.device);
  const Logical f{a.op};
  if (!a.b.present()) {
    launch_map<bool, bool>(f, a.launch.stream, a.out, a.a);
  } else {
    launch_map<bool, bool, bool>(f, a.launch.stream, a.out, a.a, a.b);
  }
}

inline const bool compare_registered = register_device_kernel(&launch_compare) &&
                                       register_device_kernel(&launch_compare_scalar) &&
                                       register_device_kernel(&launch_logical);

}  // namespace kiln::kernels
