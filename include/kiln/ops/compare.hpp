// Elementwise comparisons eq, ne, lt, le, gt, ge (broadcasting, tensor-tensor and tensor-scalar)
// returning Tensor<bool>, and logical_not / and / or / xor on bool tensors. Not differentiable:
// their outputs are piecewise constant, so no gradient flows through them.
//
// The scalar math lives in kiln::math (kiln/math/compare.hpp) as __host__ __device__ functions
// shared by the CPU loops and the CUDA kernels (kernels/elementwise/compare.cuh: CompareArgs,
// CompareScalarArgs, LogicalArgs in kernels/elementwise/args.hpp). A floating tensor compares
// with a scalar in compute_t, the scalar already rounded to its type; integer/bool in double.
#pragma once

#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/math/compare.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

namespace detail {

template <class T>
Tensor<bool> compare(CompareOp op, const Tensor<T>& a, const Tensor<T>& b) {
  const char* name = compare_name(op);
  check_defined(name, a, b);
  check_same_device(name, a, b);
  Tensor<bool> out(broadcast_shapes(name, a.shape(), b.shape()), a.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel(name, kernels::CompareArgs{.launch = launch_on(name, out.device()),
                                                    .op = op,
                                                    .out = kernel_view(out),
                                                    .a = kernel_broadcast_view(a, out.shape()),
                                                    .b = kernel_broadcast_view(b, out.shape())});
    return out;
  }
  using C = compute_t<T>;
  math::with_compare(op, [&](auto cmp) {
    cpu::map(out, a, b, [cmp](const T& x, const T& y) { return cmp(static_cast<C>(x), static_cast<C>(y)); });
  });
  return out;
}

// A floating tensor compares with the scalar rounded to its own type, so eq(float tensor, 0.1)
// matches elements holding float(0.1) (as in PyTorch). Integer and bool tensors compare in double,
// so lt(int tensor, 2.5) is true for 2 (exact for magnitudes up to 2^53).
template <class T>
Tensor<bool> compare_scalar(CompareOp op, const Tensor<T>& a, double s) {
  const char* name = compare_name(op);
  check_defined(name, a);
  Tensor<bool> out(a.shape(), a.device());
  if constexpr (is_floating<T>) s = static_cast<double>(convert<T>(s));  // exact in compute_t<T> too
  if (!out.device().is_cpu()) {
    launch_device_kernel(name, kernels::CompareScalarArgs{.launch = launch_on(name, out.device()),
                                                          .op = op,
                                                          .out = kernel_view(out),
                                                          .a = kernel_view(a),
                                                          .s = s});
    return out;
  }
  math::with_compare(op, [&](auto cmp) {
    if constexpr (is_floating<T>) {
      using C = compute_t<T>;
      const C sc = static_cast<C>(s);
      cpu::map(out, a, [cmp, sc](const T& x) { return cmp(static_cast<C>(x), sc); });
    } else {
      cpu::map(out, a, [cmp, s](const T& x) { return cmp(static_cast<double>(x), s); });
    }
  });
  return out;
}

inline Tensor<bool> logical(LogicalOp op, const char* name, const Tensor<bool>& a, const Tensor<bool>& b) {
  check_defined(name, a, b);
  check_same_device(name, a, b);
  Tensor<bool> out(broadcast_shapes(name, a.shape(), b.shape()), a.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel(name, kernels::LogicalArgs{.launch = launch_on(name, out.device()),
                                                    .op = op,
                                                    .out = kernel_view(out),
                                                    .a = kernel_broadcast_view(a, out.shape()),
                                                    .b = kernel_broadcast_view(b, out.shape())});
    return out;
  }
  cpu::map(out, a, b, [op](bool x, bool y) { return math::logical(op, x, y); });
  return out;
}

}  // namespace detail

template <class T> Tensor<bool> eq(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::eq, a, b); }
template <class T> Tensor<bool> ne(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::ne, a, b); }
template <class T> Tensor<bool> lt(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::lt, a, b); }
template <class T> Tensor<bool> le(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::le, a, b); }
template <class T> Tensor<bool> gt(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::gt, a, b); }
template <class T> Tensor<bool> ge(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare(CompareOp::ge, a, b); }

template <class T> Tensor<bool> eq(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::eq, a, s); }
template <class T> Tensor<bool> ne(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::ne, a, s); }
template <class T> Tensor<bool> lt(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::lt, a, s); }
template <class T> Tensor<bool> le(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::le, a, s); }
template <class T> Tensor<bool> gt(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::gt, a, s); }
template <class T> Tensor<bool> ge(const Tensor<T>& a, double s) { return detail::compare_scalar(CompareOp::ge, a, s); }

inline Tensor<bool> logical_not(const Tensor<bool>& a) {
  check_defined("logical_not", a);
  Tensor<bool> out(a.shape(), a.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel("logical_not", kernels::LogicalArgs{.launch = launch_on("logical_not", out.device()),
                                                             .op = LogicalOp::logical_not,
                                                             .out = kernel_view(out),
                                                             .a = kernel_view(a),
                                                             .b = {}});  // absent: logical_not reads a only
    return out;
  }
  cpu::map(out, a, [](bool x) { return math::logical(LogicalOp::logical_not, x, false); });
  return out;
}

inline Tensor<bool> logical_and(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical(LogicalOp::logical_and, "logical_and", a, b);
}
inline Tensor<bool> logical_or(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical(LogicalOp::logical_or, "logical_or", a, b);
}
inline Tensor<bool> logical_xor(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical(LogicalOp::logical_xor, "logical_xor", a, b);
}

}  // namespace kiln
