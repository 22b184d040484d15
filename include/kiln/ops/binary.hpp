// Broadcasting binary arithmetic: add, sub, mul, div, pow, maximum, minimum, and the operators.
// Backward: the local derivative times the output gradient, summed back over broadcast dims.
// The scalar math (BinaryOp, math::Add, ...) is kiln/math/binary.hpp, shared with the CUDA kernel
// kernels/elementwise/binary.cuh (BinaryArgs in kernels/elementwise/args.hpp).
#pragma once

#include <cmath>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/math/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/where.hpp"

namespace kiln {

namespace detail {

// out = a (op) b without recording a graph.
template <class T>
Tensor<T> binary_kernel(BinaryOp op, const Tensor<T>& a, const Tensor<T>& b) {
  const char* name = binary_name(op);
  check_defined(name, a, b);
  check_same_device(name, a, b);
  Tensor<T> out(broadcast_shapes(name, a.shape(), b.shape()), a.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel(name, kernels::BinaryArgs{.launch = launch_on(name, out.device()),
                                                   .op = op,
                                                   .out = kernel_view(out),
                                                   .a = kernel_broadcast_view(a, out.shape()),
                                                   .b = kernel_broadcast_view(b, out.shape())});
    return out;
  }
  using C = compute_t<T>;
  math::with_binary(op, [&](auto f) {
    cpu::map(out, a, b, [f](const T& x, const T& y) { return convert<T>(f(static_cast<C>(x), static_cast<C>(y))); });
  });
  return out;
}

template <class T>
Tensor<T> scalar_like(const Tensor<T>& t, double value) {
  return full<T>({}, convert<T>(value), t.device());
}

template <class T>
Tensor<T> binary(BinaryOp op, const Tensor<T>& a, const Tensor<T>& b);

}  // namespace detail

template <class T> Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::add, a, b); }
template <class T> Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::sub, a, b); }
template <class T> Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::mul, a, b); }
template <class T> Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::div, a, b); }
template <class T> Tensor<T> pow(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::pow, a, b); }
template <class T> Tensor<T> maximum(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::maximum, a, b); }
template <class T> Tensor<T> minimum(const Tensor<T>& a, const Tensor<T>& b) { return detail::binary(BinaryOp::minimum, a, b); }

// out += b in place, b broadcast to out's shape; not recorded in the graph (a primitive for
// gradient accumulation: autograd's TypedNode::accumulate_part adds a view op's gradient into
// part of a gradient tensor). out may be any view whose elements are distinct (no stride-0
// broadcast dims) and must not overlap b. Each element is read and written by the same thread
// of the elementwise kernel, in that order, so out serving as both output and input is safe.
template <class T>
void add_in_place(const Tensor<T>& out, const Tensor<T>& b) {
  const char* op = "add_in_place";
  check_defined(op, out, b);
  check_same_device(op, out, b);
  check(broadcast_shapes(op, out.shape(), b.shape()) == out.shape(), op, "cannot add a tensor of shape ", b.shape(),
        " into one of shape ", out.shape());
  for (std::size_t i = 0; i < out.shape().size(); ++i)
    check(out.shape()[i] <= 1 || out.strides()[i] != 0, op, "the output of shape ", out.shape(), " and strides ",
          out.strides(), " repeats elements (a broadcast view)");
  if (out.numel() == 0) return;
  if (!out.device().is_cpu()) {
    launch_device_kernel(op, kernels::BinaryArgs{.launch = launch_on(op, out.device()),
                                                 .op = BinaryOp::add,
                                                 .out = kernel_view(out),
                                                 .a = kernel_view(out),
                                                 .b = kernel_broadcast_view(b, out.shape())});
    return;
  }
  using C = compute_t<T>;
  cpu::map(out, out, b, [](const T& x, const T& y) { return convert<T>(static_cast<C>(x) + static_cast<C>(y)); });
}

// Scalar right-hand sides.
template <class T> Tensor<T> add(const Tensor<T>& a, double s) { return add(a, detail::scalar_like(a, s)); }
template <class T> Tensor<T> sub(const Tensor<T>& a, double s) { return sub(a, detail::scalar_like(a, s)); }
template <class T> Tensor<T> mul(const Tensor<T>& a, double s) { return mul(a, detail::scalar_like(a, s)); }
template <class T> Tensor<T> div(const Tensor<T>& a, double s) { return div(a, detail::scalar_like(a, s)); }
template <class T> Tensor<T> pow(const Tensor<T>& a, double s) { return pow(a, detail::scalar_like(a, s)); }

template <class T> Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }
template <class T> Tensor<T> operator+(const Tensor<T>& a, double s) { return add(a, s); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, double s) { return sub(a, s); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, double s) { return mul(a, s); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, double s) { return div(a, s); }
template <class T> Tensor<T> operator+(double s, const Tensor<T>& a) { return add(a, s); }
template <class T> Tensor<T> operator*(double s, const Tensor<T>& a) { return mul(a, s); }
template <class T> Tensor<T> operator-(double s, const Tensor<T>& a) { return sub(detail::scalar_like(a, s), a); }
template <class T> Tensor<T> operator/(double s, const Tensor<T>& a) { return div(detail::scalar_like(a, s), a); }

namespace detail {

template <class T>
Tensor<T> binary(BinaryOp op, const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<T> out = binary_kernel(op, a, b);
  if (!autograd::needs_grad(a, b)) return out;
  autograd::record(out, binary_name(op),
                   [op, a = a.detach(), b = b.detach(), y = out.detach()](const Tensor<T>& g,
                                                                         const autograd::InputGrads& in) {
    const bool ga = in.needs(0), gb = in.needs(1);
    switch (op) {
      case BinaryOp::add:
        if (ga) in.add(0, sum_to(g, a.shape()));
        if (gb) in.add(1, sum_to(g, b.shape()));
        break;
      case BinaryOp::sub:
        if (ga) in.add(0, sum_to(g, a.shape()));
        if (gb) in.add(1, sum_to(mul(g, -1.0), b.shape()));
        break;
      case BinaryOp::mul:
        if (ga) in.add(0, sum_to(mul(g, b), a.shape()));
        if (gb) in.add(1, sum_to(mul(g, a), b.shape()));
        break;
      case BinaryOp::div:  // d(a/b)/da = 1/b ; d(a/b)/db = -a/b^2 = -y/b
        if (ga) in.add(0, sum_to(div(g, b), a.shape()));
        if (gb) in.add(1, sum_to(mul(g, div(mul(y, -1.0), b)), b.shape()));
        break;
      case BinaryOp::pow: {  // d(a^b)/da = b a^(b-1) ; d(a^b)/db = a^b ln a
        if (ga) in.add(0, sum_to(mul(g, mul(b, pow(a, sub(b, 1.0)))), a.shape()));
        if (gb) {
          // The derivative in b at a = 0 multiplies 0^b = 0 (b > 0): take ln a as 0 there, not -inf.
          Tensor<T> ln_a;
          if (a.device().is_cpu()) {
            ln_a = Tensor<T>(a.shape(), a.device());
            cpu::map(ln_a, a, [](const T& x) {
              const double v = static_cast<double>(x);
              return convert<T>(v == 0.0 ? 0.0 : std::log(v));
            });
          } else if constexpr (is_floating<T>) {  // (integer tensors never require grad)
            ln_a = where(eq(a, 0.0), 0.0, log(a));
          }
          in.add(1, sum_to(mul(g, mul(y, ln_a)), b.shape()));
        }
        break;
      }
      case BinaryOp::maximum:
      case BinaryOp::minimum: {
        // The gradient goes to the selected input; ties split it evenly (keeps gradcheck exact).
        const bool is_max = op == BinaryOp::maximum;
        Tensor<T> wa;
        if (a.device().is_cpu()) {
          wa = Tensor<T>(broadcast_shapes("maximum", a.shape(), b.shape()), a.device());
          cpu::map(wa, a, b, [is_max](const T& x, const T& y) {
            const double u = static_cast<double>(x), v = static_cast<double>(y);
            return convert<T>(u == v ? 0.5 : ((is_max ? u > v : u < v) ? 1.0 : 0.0));
          });
        } else {
          // The same weights from comparisons: (a > b) + (a >= b) is 2 where a wins, 1 on a tie,
          // 0 where b wins or either is NaN; halved, exactly 1, 0.5, 0.
          const Tensor<bool> wins = is_max ? gt(a, b) : lt(a, b), wins_or_ties = is_max ? ge(a, b) : le(a, b);
          wa = mul(add(cast<T>(wins), cast<T>(wins_or_ties)), 0.5);
        }
        if (ga) in.add(0, sum_to(mul(g, wa), a.shape()));
        if (gb) in.add(1, sum_to(mul(g, sub(ones_like(wa), wa)), b.shape()));
        break;
      }
    }
  }, a, b);
  return out;
}

}  // namespace detail

}  // namespace kiln
