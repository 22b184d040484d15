// Elementwise unary ops: neg, exp, log, sqrt, rsqrt, abs, square, tanh, sigmoid, relu, silu,
// gelu (exact erf form or tanh approximation) and clamp, each differentiable; and swiglu(gate, up)
// = silu(gate) * up, the gated activation of SwiGLU MLPs, fused forward and backward.
//
// Every op is one entry of UnaryOp with two scalar functors in kiln::math (kiln/math/unary.hpp,
// shared with the CUDA kernels): the function (X) and its backward, g * f'(.) (XGrad).
// math::with_unary / with_unary_grad pick the functor from the enum; the forward is one kernel
// call (detail::unary_kernel) and the backward one more (detail::unary_backward_kernel), g * f'(.)
// fused in a single pass. Arithmetic runs in compute_t<T> (float for bf16/fp16/fp8).
//
// Where f' is cheaper in terms of the output y than of the input x (exp: y, tanh: 1 - y^2,
// sigmoid: y(1 - y), sqrt: 1/(2y), rsqrt: -y^3/2, relu: y > 0), backward saves y instead of x.
//
// Device kernels: kernels/elementwise/unary.cuh (UnaryForwardArgs, UnaryBackwardArgs) and
// kernels/elementwise/swiglu.cuh (SwigluForwardArgs, SwigluBackwardArgs), arguments in
// kernels/elementwise/args.hpp; every operand of one shape, any strides.
#pragma once

#include <cmath>
#include <limits>
#include <numbers>
#include <optional>
#include <utility>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/kernels/elementwise/args.hpp"
#include "kiln/math/swiglu.hpp"
#include "kiln/math/unary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/gradient_places.hpp"

namespace kiln {

// How gelu evaluates the normal CDF: exactly (erf, the default, as in PyTorch) or with
// 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the GPT-2 approximation.
enum class GeluApprox { none, tanh };

namespace detail {

// Whether backward is written in terms of the output (else of the input).
inline bool unary_saves_output(UnaryOp op) {
  switch (op) {
    case UnaryOp::exp:
    case UnaryOp::sqrt:
    case UnaryOp::rsqrt:
    case UnaryOp::tanh:
    case UnaryOp::sigmoid:
    case UnaryOp::relu:
      return true;
    default:
      return false;
  }
}

// y = op(x), a fresh contiguous tensor, without recording a graph.
template <class T>
Tensor<T> unary_kernel(UnaryOp op, const Tensor<T>& x, const UnaryArgs& args = {}) {
  static_assert(is_floating<T>, "kiln unary ops need a floating element type");
  const char* name = unary_name(op);
  check_defined(name, x);
  Tensor<T> out(x.shape(), x.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel(name, kernels::UnaryForwardArgs{.launch = launch_on(name, out.device()),
                                                         .op = op,
                                                         .params = args,
                                                         .out = kernel_view(out),
                                                         .x = kernel_view(x)});
    return out;
  }
  using C = compute_t<T>;
  math::with_unary(op, args, [&](auto f) {
    cpu::map(out, x, [f](const T& v) { return convert<T>(f(static_cast<C>(v))); });
  });
  return out;
}

// dL/dx = g * f'(.) evaluated at `saved` (the output y where unary_saves_output(op), else the
// input x): a fresh contiguous tensor of saved's shape, no graph.
template <class T>
Tensor<T> unary_backward_kernel(UnaryOp op, const Tensor<T>& g, const Tensor<T>& saved, const UnaryArgs& args = {}) {
  const char* name = unary_name(op);
  check_same_device(name, g, saved);
  Tensor<T> dx(saved.shape(), saved.device());
  if (!dx.device().is_cpu()) {
    launch_device_kernel(name, kernels::UnaryBackwardArgs{.launch = launch_on(name, dx.device()),
                                                          .op = op,
                                                          .params = args,
                                                          .dx = kernel_view(dx),
                                                          .g = kernel_view(g),
                                                          .saved = kernel_view(saved)});
    return dx;
  }
  using C = compute_t<T>;
  math::with_unary_grad(op, args, [&](auto f) {
    cpu::map(dx, g, saved, [f](const T& dy, const T& s) { return convert<T>(f(static_cast<C>(dy), static_cast<C>(s))); });
  });
  return dx;
}

// Forward plus the graph record.
template <class T>
Tensor<T> unary(UnaryOp op, const Tensor<T>& x, const UnaryArgs& args = {}) {
  Tensor<T> out = unary_kernel(op, x, args);
  if (!autograd::needs_grad(x)) return out;
  const Tensor<T> saved = unary_saves_output(op) ? out.detach() : x.detach();
  autograd::record(out, unary_name(op), [op, args, saved](const Tensor<T>& g, const autograd::InputGrads& in) {
    if (in.needs(0)) in.add(0, unary_backward_kernel(op, g, saved, args));
  }, x);
  return out;
}

}  // namespace detail

template <class T> Tensor<T> neg(const Tensor<T>& x) { return detail::unary(UnaryOp::neg, x); }
template <class T> Tensor<T> exp(const Tensor<T>& x) { return detail::unary(UnaryOp::exp, x); }
template <class T> Tensor<T> log(const Tensor<T>& x) { return detail::unary(UnaryOp::log, x); }
template <class T> Tensor<T> sqrt(const Tensor<T>& x) { return detail::unary(UnaryOp::sqrt, x); }
// 1 / sqrt(x).
template <class T> Tensor<T> rsqrt(const Tensor<T>& x) { return detail::unary(UnaryOp::rsqrt, x); }
// Gradient sign(x), taken as 0 at x = 0.
template <class T> Tensor<T> abs(const Tensor<T>& x) { return detail::unary(UnaryOp::abs, x); }
template <class T> Tensor<T> square(const Tensor<T>& x) { return detail::unary(UnaryOp::square, x); }
template <class T> Tensor<T> tanh(const Tensor<T>& x) { return detail::unary(UnaryOp::tanh, x); }
template <class T> Tensor<T> sigmoid(const Tensor<T>& x) { return detail::unary(UnaryOp::sigmoid, x); }
// max(x, 0); gradient 0 at x = 0.
template <class T> Tensor<T> relu(const Tensor<T>& x) { return detail::unary(UnaryOp::relu, x); }
// x * sigmoid(x) (also called swish).
template <class T> Tensor<T> silu(const Tensor<T>& x) { return detail::unary(UnaryOp::silu, x); }
// x * Phi(x), Phi the standard normal CDF, exact by default.
template <class T>
Tensor<T> gelu(const Tensor<T>& x, GeluApprox approx = GeluApprox::none) {
  return detail::unary(approx == GeluApprox::tanh ? UnaryOp::gelu_tanh : UnaryOp::gelu, x);
}

// min(max(x, lo), hi); either bound may be absent (std::nullopt), not both. NaN stays NaN.
// Gradient 1 where lo < x < hi strictly, 0 elsewhere (the bounds included).
template <class T>
Tensor<T> clamp(const Tensor<T>& x, std::optional<double> lo, std::optional<double> hi) {
  check_defined("clamp", x);
  check(lo || hi, "clamp", "needs at least one bound (tensor of shape ", x.shape(), ")");
  check(!(lo && std::isnan(*lo)) && !(hi && std::isnan(*hi)), "clamp", "NaN bound (tensor of shape ", x.shape(), ")");
  check(!(lo && hi) || *lo <= *hi, "clamp", "lower bound ", lo.value_or(0.0), " exceeds upper bound ",
        hi.value_or(0.0), " (tensor of shape ", x.shape(), ")");
  UnaryArgs args;
  if (lo) args.lo = *lo;
  if (hi) args.hi = *hi;
  return detail::unary(UnaryOp::clamp, x, args);
}
template <class T> Tensor<T> clamp_min(const Tensor<T>& x, double lo) { return clamp(x, lo, std::nullopt); }
template <class T> Tensor<T> clamp_max(const Tensor<T>& x, double hi) { return clamp(x, std::nullopt, hi); }

template <class T> Tensor<T> operator-(const Tensor<T>& x) { return neg(x); }

namespace detail {

// dL/dgate and dL/dup of swiglu in one pass over g, gate and up. On the CPU fresh contiguous
// tensors; on a GPU where gate and up lay when they are views of wider rows (ops/gradient_places.hpp:
// the halves of one [rows, 2I] projection get their gradients as that projection's output
// gradient, with no copy when the split settles).
template <class T>
std::pair<Tensor<T>, Tensor<T>> swiglu_backward_kernel(const Tensor<T>& g, const Tensor<T>& gate, const Tensor<T>& up) {
  check_same_device("swiglu", g, gate, up);
  if (!gate.device().is_cpu()) {
    const std::vector<Tensor<T>> grads = gradients_where_inputs_lay<T>({gate, up});
    const Tensor<T>& d_gate = grads[0];
    const Tensor<T>& d_up = grads[1];
    launch_device_kernel("swiglu", kernels::SwigluBackwardArgs{.launch = launch_on("swiglu", gate.device()),
                                                               .d_gate = kernel_view(d_gate),
                                                               .d_up = kernel_view(d_up),
                                                               .g = kernel_view(g),
                                                               .gate = kernel_view(gate),
                                                               .up = kernel_view(up)});
    return {d_gate, d_up};
  }
  Tensor<T> d_gate(gate.shape(), gate.device()), d_up(gate.shape(), gate.device());
  // Two outputs: cpu::map writes one, so walk contiguous copies (no copy when already so).
  const Tensor<T> gc = contiguous(g.detach()), xc = contiguous(gate.detach()), uc = contiguous(up.detach());
  const T *pg = gc.data(), *px = xc.data(), *pu = uc.data();
  T *pdx = d_gate.data(), *pdu = d_up.data();
  using C = compute_t<T>;
  cpu::parallel_for(gate.numel(), 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const auto d = math::SwigluGrad{}(static_cast<C>(pg[i]), static_cast<C>(px[i]), static_cast<C>(pu[i]));
      pdx[i] = convert<T>(d.gate);
      pdu[i] = convert<T>(d.up);
    }
  });
  return {d_gate, d_up};
}

}  // namespace detail

// SwiGLU's gate: silu(gate) * up, elementwise over two tensors of one shape (in a SwiGLU MLP,
// the two projections of the same input). One pass forward and one pass backward, for both
// gradients, instead of silu + mul and their two backward passes.
template <class T>
Tensor<T> swiglu(const Tensor<T>& gate, const Tensor<T>& up) {
  static_assert(is_floating<T>, "kiln::swiglu needs a floating element type");
  check_defined("swiglu", gate, up);
  check_same_device("swiglu", gate, up);
  check(gate.shape() == up.shape(), "swiglu", "gate of shape ", gate.shape(), " and up of shape ", up.shape(),
        " must have the same shape");
  Tensor<T> out(gate.shape(), gate.device());
  if (!out.device().is_cpu()) {
    launch_device_kernel("swiglu", kernels::SwigluForwardArgs{.launch = launch_on("swiglu", out.device()),
                                                              .out = kernel_view(out),
                                                              .gate = kernel_view(gate),
                                                              .up = kernel_view(up)});
  } else {
    using C = compute_t<T>;
    cpu::map(out, gate, up,
             [](const T& x, const T& u) { return convert<T>(math::Swiglu{}(static_cast<C>(x), static_cast<C>(u))); });
  }
  if (autograd::needs_grad(gate, up)) {
    autograd::record(out, "swiglu", [gate = gate.detach(), up = up.detach()](const Tensor<T>& g,
                                                                             const autograd::InputGrads& in) {
      auto [d_gate, d_up] = detail::swiglu_backward_kernel(g, gate, up);
      if (in.needs(0)) in.add(0, d_gate);
      if (in.needs(1)) in.add(1, d_up);
    }, gate, up);
  }
  return out;
}

}  // namespace kiln
