// Elementwise comparisons eq, ne, lt, le, gt, ge (broadcasting, tensor-tensor and tensor-scalar)
// returning Tensor<bool>, and logical_not / and / or / xor on bool tensors. Not differentiable:
// their outputs are piecewise constant, so no gradient flows through them.
//
// The scalar math lives in kiln::math as __host__ __device__ functions shared by the CPU loops
// and the CUDA kernels. Device kernels (KernelCall, see core/dispatch.hpp):
//   "compare"        tensors {out, a, b} (a, b broadcast to out), ints {CompareOp}
//   "compare_scalar" tensors {out, a},   reals {s}, ints {CompareOp}: floating a compares in
//                    compute_t with s (already rounded to a's type), integer/bool a in double
//   "logical"        tensors {out, a, b} or {out, a} (not), ints {LogicalOp}
#pragma once

#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/core/dispatch.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

enum class CompareOp { eq, ne, lt, le, gt, ge };
enum class LogicalOp { logical_not, logical_and, logical_or, logical_xor };

namespace math {

// Written with the C++ operators, so NaN compares false except under ne (IEEE).
template <class C>
KILN_HD bool compare(CompareOp op, C x, C y) {
  switch (op) {
    case CompareOp::eq: return x == y;
    case CompareOp::ne: return x != y;
    case CompareOp::lt: return x < y;
    case CompareOp::le: return x <= y;
    case CompareOp::gt: return x > y;
    case CompareOp::ge: break;
  }
  return x >= y;
}

// b is ignored by logical_not.
KILN_HD inline bool logical(LogicalOp op, bool a, bool b) {
  switch (op) {
    case LogicalOp::logical_not: return !a;
    case LogicalOp::logical_and: return a && b;
    case LogicalOp::logical_or: return a || b;
    case LogicalOp::logical_xor: break;
  }
  return a != b;
}

// One comparison as a functor with the op fixed at compile time: the CPU loops vectorise then.
template <CompareOp Op>
struct Compare {
  template <class C>
  KILN_HD bool operator()(C x, C y) const {
    return compare(Op, x, y);
  }
};

template <class F>
decltype(auto) with_compare(CompareOp op, F&& f) {
  switch (op) {
    case CompareOp::eq: return f(Compare<CompareOp::eq>{});
    case CompareOp::ne: return f(Compare<CompareOp::ne>{});
    case CompareOp::lt: return f(Compare<CompareOp::lt>{});
    case CompareOp::le: return f(Compare<CompareOp::le>{});
    case CompareOp::gt: return f(Compare<CompareOp::gt>{});
    case CompareOp::ge: break;
  }
  return f(Compare<CompareOp::ge>{});
}

}  // namespace math

namespace detail {

inline const char* compare_name(CompareOp op) {
  switch (op) {
    case CompareOp::eq: return "eq";
    case CompareOp::ne: return "ne";
    case CompareOp::lt: return "lt";
    case CompareOp::le: return "le";
    case CompareOp::gt: return "gt";
    case CompareOp::ge: return "ge";
  }
  return "?";
}

template <class T>
Tensor<bool> compare(CompareOp op, const Tensor<T>& a, const Tensor<T>& b) {
  const char* name = compare_name(op);
  check_defined(name, a, b);
  check_same_device(name, a, b);
  Tensor<bool> out(broadcast_shapes(name, a.shape(), b.shape()), a.device());
  if (!out.device().is_cpu()) {
    run_device_kernel(name, "compare", {{tensor_arg(out), broadcast_arg(a, out.shape()), broadcast_arg(b, out.shape())},
                                        {}, {static_cast<std::int64_t>(op)}});
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
    run_device_kernel(name, "compare_scalar", {{tensor_arg(out), tensor_arg(a)}, {s}, {static_cast<std::int64_t>(op)}});
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
    run_device_kernel(name, "logical", {{tensor_arg(out), broadcast_arg(a, out.shape()), broadcast_arg(b, out.shape())},
                                        {}, {static_cast<std::int64_t>(op)}});
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
    run_device_kernel("logical_not", "logical", {{tensor_arg(out), tensor_arg(a)}, {},
                                                 {static_cast<std::int64_t>(LogicalOp::logical_not)}});
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
