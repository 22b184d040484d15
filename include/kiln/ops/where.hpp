// Selection by a boolean mask: where(cond, a, b) picks a where cond holds and b elsewhere (all
// three broadcast together); masked_fill(t, mask, value) writes value where mask holds.
//
// Backward: each output element came from exactly one input element, so the output gradient goes
// to a where cond holds and to b elsewhere (zero for the other), then sums back over the dims
// that input was broadcast along. Filled positions get no gradient.
//
// Device kernels: kernels/elementwise/where.cuh (WhereArgs, MaskedFillArgs in
// kernels/elementwise/args.hpp); operands broadcast to out's shape, masked_fill's value already
// rounded to T.
#pragma once

#include <algorithm>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/reduce.hpp"

namespace kiln {

namespace detail {

// The common broadcast shape of where's three operands, with an error naming all three.
inline Shape where_shape(const Shape& cond, const Shape& a, const Shape& b) {
  const std::size_t n = std::max({cond.size(), a.size(), b.size()});
  Shape out(n, 1);
  for (const Shape* s : {&cond, &a, &b}) {
    const std::size_t lead = n - s->size();
    for (std::size_t i = 0; i < s->size(); ++i) {
      const std::int64_t size = (*s)[i];
      if (size == 1) continue;
      if (out[lead + i] != 1 && out[lead + i] != size)
        fail("where", "condition of shape ", cond, ", a of shape ", a, " and b of shape ", b,
             " cannot be broadcast together");
      out[lead + i] = size;
    }
  }
  return out;
}

// Whether a tensor of shape `from` broadcasts to exactly `to`.
inline bool broadcasts_to(const Shape& from, const Shape& to) {
  if (from.size() > to.size()) return false;
  const std::size_t lead = to.size() - from.size();
  for (std::size_t i = 0; i < from.size(); ++i)
    if (from[i] != 1 && from[i] != to[lead + i]) return false;
  return true;
}

}  // namespace detail

// cond ? a : b elementwise; cond, a and b broadcast together. Differentiable in a and b.
template <class T>
Tensor<T> where(const Tensor<bool>& cond, const Tensor<T>& a, const Tensor<T>& b) {
  check_defined("where", cond, a, b);
  check_same_device("where", cond, a, b);
  Tensor<T> out(detail::where_shape(cond.shape(), a.shape(), b.shape()), a.device());
  if (out.device().is_cpu()) {
    cpu::map(out, cond, a, b, [](bool c, const T& x, const T& y) { return c ? x : y; });
  } else {
    launch_device_kernel("where", kernels::WhereArgs{.launch = launch_on("where", out.device()),
                                                     .out = kernel_view(out),
                                                     .cond = kernel_broadcast_view(cond, out.shape()),
                                                     .a = kernel_broadcast_view(a, out.shape()),
                                                     .b = kernel_broadcast_view(b, out.shape())});
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(a, b)) {
      autograd::record(out, "where", [cond = cond.detach(), a_shape = a.shape(), b_shape = b.shape()](
                                         const Tensor<T>& g, const autograd::InputGrads& in) {
        const Tensor<T> zero = zeros<T>({}, g.device());
        if (in.needs(0)) in.add(0, sum_to(where(cond, g, zero), a_shape));
        if (in.needs(1)) in.add(1, sum_to(where(cond, zero, g), b_shape));
      }, a, b);
    }
  }
  return out;
}

// Scalar branches: where(cond, a, 0.0), where(cond, -1e9, scores).
template <class T>
Tensor<T> where(const Tensor<bool>& cond, const Tensor<T>& a, double b) {
  check_defined("where", a);
  return where(cond, a, full<T>({}, convert<T>(b), a.device()));
}
template <class T>
Tensor<T> where(const Tensor<bool>& cond, double a, const Tensor<T>& b) {
  check_defined("where", b);
  return where(cond, full<T>({}, convert<T>(a), b.device()), b);
}

// t with `value` written where mask (broadcast to t's shape) holds. Differentiable in t: the
// filled positions get zero gradient.
template <class T>
Tensor<T> masked_fill(const Tensor<T>& t, const Tensor<bool>& mask, double value) {
  check_defined("masked_fill", t, mask);
  check_same_device("masked_fill", t, mask);
  check(detail::broadcasts_to(mask.shape(), t.shape()), "masked_fill", "mask of shape ", mask.shape(),
        " cannot be broadcast to the input's shape ", t.shape());
  Tensor<T> out(t.shape(), t.device());
  const T v = convert<T>(value);
  if (out.device().is_cpu()) {
    cpu::map(out, t, mask, [v](const T& x, bool m) { return m ? v : x; });
  } else {
    launch_device_kernel("masked_fill", kernels::MaskedFillArgs{.launch = launch_on("masked_fill", out.device()),
                                                                .out = kernel_view(out),
                                                                .t = kernel_view(t),
                                                                .mask = kernel_broadcast_view(mask, out.shape()),
                                                                .value = static_cast<double>(v)});
  }
  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(t)) {
      autograd::record(out, "masked_fill", [mask = mask.detach()](const Tensor<T>& g, const autograd::InputGrads& in) {
        in.add(0, masked_fill(g, mask, 0.0));
      }, t);
    }
  }
  return out;
}

}  // namespace kiln
