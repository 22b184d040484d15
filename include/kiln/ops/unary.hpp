// Elementwise unary ops: neg, exp, log, sqrt, rsqrt, abs, square, tanh, sigmoid, relu, silu,
// gelu (exact erf form or tanh approximation) and clamp, each differentiable; and swiglu(gate, up)
// = silu(gate) * up, the gated activation of SwiGLU MLPs, fused forward and backward.
//
// Every op is one entry of UnaryOp with two scalar functors in kiln::math: the function (X) and
// its backward, g * f'(.) (XGrad), both KILN_HD so the CPU loops and the CUDA kernels compute the
// same formula. math::with_unary / with_unary_grad pick the functor from the enum; the forward is
// one kernel call (detail::unary_kernel) and the backward one more (detail::unary_backward_kernel),
// g * f'(.) fused in a single pass. Arithmetic runs in compute_t<T> (float for bf16/fp16/fp8).
//
// Where f' is cheaper in terms of the output y than of the input x (exp: y, tanh: 1 - y^2,
// sigmoid: y(1 - y), sqrt: 1/(2y), rsqrt: -y^3/2, relu: y > 0), backward saves y instead of x.
//
// Device kernels (KernelCall, see core/dispatch.hpp):
//   "unary"           tensors {out, x},        reals {lo, hi}, ints {UnaryOp}
//   "unary_backward"  tensors {dx, g, saved},  reals {lo, hi}, ints {UnaryOp}
// with lo/hi the clamp bounds (infinite when absent; ignored by the other ops), and
//   "swiglu"          tensors {out, gate, up}
//   "swiglu_backward" tensors {d_gate, d_up, g, gate, up}
// (all operands of one shape, any strides).
#pragma once

#include <cmath>
#include <limits>
#include <numbers>
#include <optional>
#include <utility>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dispatch.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

enum class UnaryOp { neg, exp, log, sqrt, rsqrt, abs, square, tanh, sigmoid, relu, silu, gelu, gelu_tanh, clamp };

// How gelu evaluates the normal CDF: exactly (erf, the default, as in PyTorch) or with
// 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the GPT-2 approximation.
enum class GeluApprox { none, tanh };

// Parameters of the ops that take any (clamp's bounds; an absent bound is an infinite one).
struct UnaryArgs {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
};

namespace math {

// 1 / (1 + e^-x) without overflow: with e = e^-|x| <= 1, it is 1/(1+e) for x >= 0 and
// e/(1+e) for x < 0, so no intermediate exceeds 2, sigmoid(+-1000) is exactly 1 / 0 and the left
// tail keeps full relative precision. The numerator (1 or e) is picked arithmetically from the
// sign, s = +-1/2: (1/2 + s) + (1/2 - s) e is exactly 1 or e. A branch on the sign would be
// mispredicted half the time on random data and cost 3x the whole loop.
template <class C>
KILN_HD C sigmoid_of(C x) {
  const C e = std::exp(-std::abs(x));
  const C s = std::copysign(C(0.5), x);
  return (C(0.5) + s + (C(0.5) - s) * e) / (C(1) + e);
}

// gelu(x) = x Phi(x). Phi(x) = erfc(-x/sqrt2)/2 rather than (1 + erf(x/sqrt2))/2: the latter
// cancels to 0 for x below about -6 (float) where the true value is still representable.
template <class C>
KILN_HD C normal_cdf(C x) {
  return C(0.5) * std::erfc(-x / std::numbers::sqrt2_v<C>);
}
template <class C>
KILN_HD C normal_pdf(C x) {
  return std::numbers::inv_sqrtpi_v<C> / std::numbers::sqrt2_v<C> * std::exp(C(-0.5) * x * x);
}

// The tanh approximation as a sigmoid: (1 + tanh u)/2 = sigmoid(2u), which does not cancel for
// large negative x. u = sqrt(2/pi) (x + 0.044715 x^3).
template <class C>
KILN_HD C gelu_tanh_u(C x) {
  const C k = std::numbers::sqrt2_v<C> * std::numbers::inv_sqrtpi_v<C>;
  return k * (x + C(0.044715) * x * x * x);
}
template <class C>
KILN_HD C gelu_tanh_du(C x) {
  const C k = std::numbers::sqrt2_v<C> * std::numbers::inv_sqrtpi_v<C>;
  return k * (C(1) + C(3 * 0.044715) * x * x);
}

// ---- forward: y = f(x) ----
struct Neg { template <class C> KILN_HD C operator()(C x) const { return -x; } };
struct Exp { template <class C> KILN_HD C operator()(C x) const { return std::exp(x); } };
struct Log { template <class C> KILN_HD C operator()(C x) const { return std::log(x); } };
struct Sqrt { template <class C> KILN_HD C operator()(C x) const { return std::sqrt(x); } };
struct Rsqrt { template <class C> KILN_HD C operator()(C x) const { return C(1) / std::sqrt(x); } };
struct Abs { template <class C> KILN_HD C operator()(C x) const { return std::abs(x); } };
struct Square { template <class C> KILN_HD C operator()(C x) const { return x * x; } };
struct Tanh { template <class C> KILN_HD C operator()(C x) const { return std::tanh(x); } };
struct Sigmoid { template <class C> KILN_HD C operator()(C x) const { return sigmoid_of(x); } };
// Written so that NaN (every comparison false) passes through, as in PyTorch.
struct Relu { template <class C> KILN_HD C operator()(C x) const { return x < C(0) ? C(0) : x; } };
struct Silu { template <class C> KILN_HD C operator()(C x) const { return x * sigmoid_of(x); } };
struct Gelu { template <class C> KILN_HD C operator()(C x) const { return x * normal_cdf(x); } };
struct GeluTanh { template <class C> KILN_HD C operator()(C x) const { return x * sigmoid_of(C(2) * gelu_tanh_u(x)); } };
struct Clamp {
  double lo, hi;
  template <class C>
  KILN_HD C operator()(C x) const {
    const C l = static_cast<C>(lo), h = static_cast<C>(hi);
    return x < l ? l : (x > h ? h : x);
  }
};

// ---- backward: dL/dx = dy * f'(.) at `s`, the saved output y or input x (see the file comment) ----
struct NegGrad { template <class C> KILN_HD C operator()(C dy, C) const { return -dy; } };
struct ExpGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return dy * y; } };
struct LogGrad { template <class C> KILN_HD C operator()(C dy, C x) const { return dy / x; } };
struct SqrtGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return dy / (C(2) * y); } };
struct RsqrtGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return C(-0.5) * dy * y * y * y; } };
// sign(x) with sign(0) = 0 (a subgradient, as in PyTorch); NaN stays NaN.
struct AbsGrad {
  template <class C>
  KILN_HD C operator()(C dy, C x) const {
    return x > C(0) ? dy : (x < C(0) ? -dy : (x == C(0) ? C(0) : x));
  }
};
struct SquareGrad { template <class C> KILN_HD C operator()(C dy, C x) const { return C(2) * x * dy; } };
struct TanhGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return dy * (C(1) - y * y); } };
struct SigmoidGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return dy * y * (C(1) - y); } };
struct ReluGrad { template <class C> KILN_HD C operator()(C dy, C y) const { return y > C(0) ? dy : C(0); } };
// d/dx x s(x) = s + x s (1 - s) with s = sigmoid(x).
struct SiluGrad {
  template <class C>
  KILN_HD C operator()(C dy, C x) const {
    const C s = sigmoid_of(x);
    return dy * s * (C(1) + x * (C(1) - s));
  }
};
// d/dx x Phi(x) = Phi(x) + x phi(x).
struct GeluGrad {
  template <class C>
  KILN_HD C operator()(C dy, C x) const { return dy * (normal_cdf(x) + x * normal_pdf(x)); }
};
// d/dx x s(2u) = s + x * 2 s (1 - s) u'(x).
struct GeluTanhGrad {
  template <class C>
  KILN_HD C operator()(C dy, C x) const {
    const C s = sigmoid_of(C(2) * gelu_tanh_u(x));
    return dy * (s + x * C(2) * s * (C(1) - s) * gelu_tanh_du(x));
  }
};
// 1 strictly inside the bounds, 0 on and outside them.
struct ClampGrad {
  double lo, hi;
  template <class C>
  KILN_HD C operator()(C dy, C x) const {
    return (static_cast<C>(lo) < x && x < static_cast<C>(hi)) ? dy : C(0);
  }
};

// ---- SwiGLU: silu(gate) * up, and both partial derivatives in one evaluation ----
// Evaluated as (gate * s) * up with s = sigmoid(gate): in float and double this is bit for bit
// what silu(gate) followed by mul(., up) computes, only without the intermediate tensor.
struct Swiglu {
  template <class C>
  KILN_HD C operator()(C gate, C up) const {
    return gate * sigmoid_of(gate) * up;
  }
};
template <class C>
struct SwigluGrads {
  C gate, up;
};
// d/dgate = dy * up * silu'(gate) = SiluGrad at (dy * up, gate); d/dup = dy * silu(gate).
struct SwigluGrad {
  template <class C>
  KILN_HD SwigluGrads<C> operator()(C dy, C gate, C up) const {
    const C s = sigmoid_of(gate);
    return {dy * up * s * (C(1) + gate * (C(1) - s)), dy * (gate * s)};
  }
};

// Calls f(functor) with the forward functor of `op`.
template <class F>
decltype(auto) with_unary(UnaryOp op, const UnaryArgs& args, F&& f) {
  switch (op) {
    case UnaryOp::neg: return f(Neg{});
    case UnaryOp::exp: return f(Exp{});
    case UnaryOp::log: return f(Log{});
    case UnaryOp::sqrt: return f(Sqrt{});
    case UnaryOp::rsqrt: return f(Rsqrt{});
    case UnaryOp::abs: return f(Abs{});
    case UnaryOp::square: return f(Square{});
    case UnaryOp::tanh: return f(Tanh{});
    case UnaryOp::sigmoid: return f(Sigmoid{});
    case UnaryOp::relu: return f(Relu{});
    case UnaryOp::silu: return f(Silu{});
    case UnaryOp::gelu: return f(Gelu{});
    case UnaryOp::gelu_tanh: return f(GeluTanh{});
    case UnaryOp::clamp: break;
  }
  return f(Clamp{args.lo, args.hi});
}

// Calls f(functor) with the backward functor of `op`.
template <class F>
decltype(auto) with_unary_grad(UnaryOp op, const UnaryArgs& args, F&& f) {
  switch (op) {
    case UnaryOp::neg: return f(NegGrad{});
    case UnaryOp::exp: return f(ExpGrad{});
    case UnaryOp::log: return f(LogGrad{});
    case UnaryOp::sqrt: return f(SqrtGrad{});
    case UnaryOp::rsqrt: return f(RsqrtGrad{});
    case UnaryOp::abs: return f(AbsGrad{});
    case UnaryOp::square: return f(SquareGrad{});
    case UnaryOp::tanh: return f(TanhGrad{});
    case UnaryOp::sigmoid: return f(SigmoidGrad{});
    case UnaryOp::relu: return f(ReluGrad{});
    case UnaryOp::silu: return f(SiluGrad{});
    case UnaryOp::gelu: return f(GeluGrad{});
    case UnaryOp::gelu_tanh: return f(GeluTanhGrad{});
    case UnaryOp::clamp: break;
  }
  return f(ClampGrad{args.lo, args.hi});
}

}  // namespace math

namespace detail {

inline const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::abs: return "abs";
    case UnaryOp::square: return "square";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::relu: return "relu";
    case UnaryOp::silu: return "silu";
    case UnaryOp::gelu: return "gelu";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::clamp: return "clamp";
  }
  return "?";
}

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
    run_device_kernel(name, "unary", {{tensor_arg(out), tensor_arg(x)}, {args.lo, args.hi}, {static_cast<std::int64_t>(op)}});
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
    run_device_kernel(name, "unary_backward",
                      {{tensor_arg(dx), tensor_arg(g), tensor_arg(saved)}, {args.lo, args.hi}, {static_cast<std::int64_t>(op)}});
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

// dL/dgate and dL/dup of swiglu in one pass over g, gate and up (fresh contiguous tensors).
template <class T>
std::pair<Tensor<T>, Tensor<T>> swiglu_backward_kernel(const Tensor<T>& g, const Tensor<T>& gate, const Tensor<T>& up) {
  check_same_device("swiglu", g, gate, up);
  Tensor<T> d_gate(gate.shape(), gate.device()), d_up(gate.shape(), gate.device());
  if (!gate.device().is_cpu()) {
    run_device_kernel("swiglu", "swiglu_backward",
                      {{tensor_arg(d_gate), tensor_arg(d_up), tensor_arg(g), tensor_arg(gate), tensor_arg(up)}, {}, {}});
    return {d_gate, d_up};
  }
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
    run_device_kernel("swiglu", "swiglu", {{tensor_arg(out), tensor_arg(gate), tensor_arg(up)}, {}, {}});
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
