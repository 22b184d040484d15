// Elementwise comparisons eq, ne, lt, le, gt, ge (broadcasting, tensor-tensor and tensor-scalar)
// returning Tensor<bool>, and logical_not / and / or / xor on bool tensors. Not differentiable:
// their outputs are piecewise constant, so no gradient flows through them.
#pragma once

#include <functional>

#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/ops/common.hpp"

namespace kiln {

namespace detail {

template <class T, class Cmp>
Tensor<bool> compare(const char* op, const Tensor<T>& a, const Tensor<T>& b, Cmp cmp) {
  check_defined(op, a, b);
  check_same_device(op, a, b);
  check_cpu(op, a);
  using C = compute_t<T>;
  Tensor<bool> out(broadcast_shapes(op, a.shape(), b.shape()), a.device());
  cpu::map(out, a, b, [cmp](const T& x, const T& y) { return cmp(static_cast<C>(x), static_cast<C>(y)); });
  return out;
}

// A floating tensor compares with the scalar rounded to its own type, so eq(float tensor, 0.1)
// matches elements holding float(0.1) (as in PyTorch). Integer and bool tensors compare in double,
// so lt(int tensor, 2.5) is true for 2 (exact for magnitudes up to 2^53).
template <class T, class Cmp>
Tensor<bool> compare_scalar(const char* op, const Tensor<T>& a, double s, Cmp cmp) {
  check_defined(op, a);
  check_cpu(op, a);
  Tensor<bool> out(a.shape(), a.device());
  if constexpr (is_floating<T>) {
    using C = compute_t<T>;
    const C sc = static_cast<C>(convert<T>(s));
    cpu::map(out, a, [cmp, sc](const T& x) { return cmp(static_cast<C>(x), sc); });
  } else {
    cpu::map(out, a, [cmp, s](const T& x) { return cmp(static_cast<double>(x), s); });
  }
  return out;
}

template <class F>
Tensor<bool> logical(const char* op, const Tensor<bool>& a, const Tensor<bool>& b, F f) {
  check_defined(op, a, b);
  check_same_device(op, a, b);
  check_cpu(op, a);
  Tensor<bool> out(broadcast_shapes(op, a.shape(), b.shape()), a.device());
  cpu::map(out, a, b, f);
  return out;
}

}  // namespace detail

template <class T> Tensor<bool> eq(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("eq", a, b, std::equal_to<>{}); }
template <class T> Tensor<bool> ne(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("ne", a, b, std::not_equal_to<>{}); }
template <class T> Tensor<bool> lt(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("lt", a, b, std::less<>{}); }
template <class T> Tensor<bool> le(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("le", a, b, std::less_equal<>{}); }
template <class T> Tensor<bool> gt(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("gt", a, b, std::greater<>{}); }
template <class T> Tensor<bool> ge(const Tensor<T>& a, const Tensor<T>& b) { return detail::compare("ge", a, b, std::greater_equal<>{}); }

template <class T> Tensor<bool> eq(const Tensor<T>& a, double s) { return detail::compare_scalar("eq", a, s, std::equal_to<>{}); }
template <class T> Tensor<bool> ne(const Tensor<T>& a, double s) { return detail::compare_scalar("ne", a, s, std::not_equal_to<>{}); }
template <class T> Tensor<bool> lt(const Tensor<T>& a, double s) { return detail::compare_scalar("lt", a, s, std::less<>{}); }
template <class T> Tensor<bool> le(const Tensor<T>& a, double s) { return detail::compare_scalar("le", a, s, std::less_equal<>{}); }
template <class T> Tensor<bool> gt(const Tensor<T>& a, double s) { return detail::compare_scalar("gt", a, s, std::greater<>{}); }
template <class T> Tensor<bool> ge(const Tensor<T>& a, double s) { return detail::compare_scalar("ge", a, s, std::greater_equal<>{}); }

inline Tensor<bool> logical_not(const Tensor<bool>& a) {
  check_defined("logical_not", a);
  check_cpu("logical_not", a);
  Tensor<bool> out(a.shape(), a.device());
  cpu::map(out, a, [](bool x) { return !x; });
  return out;
}

inline Tensor<bool> logical_and(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical("logical_and", a, b, [](bool x, bool y) { return x && y; });
}
inline Tensor<bool> logical_or(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical("logical_or", a, b, [](bool x, bool y) { return x || y; });
}
inline Tensor<bool> logical_xor(const Tensor<bool>& a, const Tensor<bool>& b) {
  return detail::logical("logical_xor", a, b, [](bool x, bool y) { return x != y; });
}

}  // namespace kiln
