// Elementwise unary ops: neg, exp, log, sqrt, rsqrt, abs, square, tanh, sigmoid, relu, silu,
// gelu (exact erf form or tanh approximation) and clamp, each differentiable.
//
// Every op is one entry of UnaryOp. The forward is one kernel, detail::unary_kernel, and the
// backward one more, detail::unary_backward_kernel (g * f'(.) fused in a single pass); both switch
// on the enum to pick a scalar functor, so another backend only has to dispatch on the same enum.
// Arithmetic runs in compute_t<T> (float for bf16/fp16/fp8).
//
// Where f' is cheaper to write in terms of the output y than of the input x (exp: y, tanh: 1 - y^2,
// sigmoid: y(1 - y), sqrt: 1/(2y), rsqrt: -y^3/2, relu: y > 0), backward saves y instead of x.
#pragma once

#include <cmath>
#include <limits>
#include <numbers>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/elementwise.hpp"
#include "kiln/ops/common.hpp"

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

// 1 / (1 + e^-x) without overflow: with e = e^-|x| <= 1, it is 1/(1+e) for x >= 0 and
// e/(1+e) for x < 0, so no intermediate exceeds 2 and sigmoid(+-1000) is exactly 1 / 0.
template <class C>
C sigmoid_of(C x) {
  const C e = std::exp(-std::abs(x));
  const C r = C(1) / (C(1) + e);
  return x >= C(0) ? r : e * r;
}

// gelu(x) = x Phi(x). Phi(x) = erfc(-x/sqrt2)/2 rather than (1 + erf(x/sqrt2))/2: the latter
// cancels to 0 for x below about -6 (float) where the true value is still representable.
template <class C>
C normal_cdf(C x) {
  return C(0.5) * std::erfc(-x / std::numbers::sqrt2_v<C>);
}
template <class C>
C normal_pdf(C x) {
  return std::numbers::inv_sqrtpi_v<C> / std::numbers::sqrt2_v<C> * std::exp(C(-0.5) * x * x);
}

// The tanh approximation as a sigmoid: (1 + tanh u)/2 = sigmoid(2u), which does not cancel for
// large negative x. u = sqrt(2/pi) (x + 0.044715 x^3).
inline constexpr double gelu_tanh_coeff = 0.044715;
template <class C>
C gelu_tanh_u(C x) {
  const C k = std::numbers::sqrt2_v<C> * std::numbers::inv_sqrtpi_v<C>;
  return k * (x + C(gelu_tanh_coeff) * x * x * x);
}
template <class C>
C gelu_tanh_du(C x) {
  const C k = std::numbers::sqrt2_v<C> * std::numbers::inv_sqrtpi_v<C>;
  return k * (C(1) + C(3 * gelu_tanh_coeff) * x * x);
}

// y = op(x), a fresh contiguous tensor, without recording a graph.
template <class T>
Tensor<T> unary_kernel(UnaryOp op, const Tensor<T>& x, UnaryArgs args = {}) {
  static_assert(is_floating<T>, "kiln unary ops need a floating element type");
  const char* name = unary_name(op);
  check_defined(name, x);
  check_cpu(name, x);
  Tensor<T> out(x.shape(), x.device());
  using C = compute_t<T>;
  auto run = [&](auto f) { cpu::map(out, x, [f](const T& v) { return convert<T>(f(static_cast<C>(v))); }); };
  switch (op) {
    case UnaryOp::neg: run([](C v) { return -v; }); break;
    case UnaryOp::exp: run([](C v) { return std::exp(v); }); break;
    case UnaryOp::log: run([](C v) { return std::log(v); }); break;
    case UnaryOp::sqrt: run([](C v) { return std::sqrt(v); }); break;
    case UnaryOp::rsqrt: run([](C v) { return C(1) / std::sqrt(v); }); break;
    case UnaryOp::abs: run([](C v) { return std::abs(v); }); break;
    case UnaryOp::square: run([](C v) { return v * v; }); break;
    case UnaryOp::tanh: run([](C v) { return std::tanh(v); }); break;
    case UnaryOp::sigmoid: run([](C v) { return sigmoid_of(v); }); break;
    // Written so that NaN (every comparison false) passes through, as in PyTorch.
    case UnaryOp::relu: run([](C v) { return v < C(0) ? C(0) : v; }); break;
    case UnaryOp::silu: run([](C v) { return v * sigmoid_of(v); }); break;
    case UnaryOp::gelu: run([](C v) { return v * normal_cdf(v); }); break;
    case UnaryOp::gelu_tanh: run([](C v) { return v * sigmoid_of(C(2) * gelu_tanh_u(v)); }); break;
    case UnaryOp::clamp: {
      const C lo = static_cast<C>(args.lo), hi = static_cast<C>(args.hi);
      run([lo, hi](C v) { return v < lo ? lo : (v > hi ? hi : v); });
      break;
    }
  }
  return out;
}

// dL/dx = g * f'(.), evaluated at `saved`: the output y for ops where unary_saves_output(op),
// else the input x. Fresh contiguous tensor of saved's shape; no graph.
template <class T>
Tensor<T> unary_backward_kernel(UnaryOp op, const Tensor<T>& g, const Tensor<T>& saved, UnaryArgs args = {}) {
  const char* name = unary_name(op);
  check_cpu(name, g);
  Tensor<T> out(saved.shape(), saved.device());
  using C = compute_t<T>;
  auto run = [&](auto f) {
    cpu::map(out, g, saved, [f](const T& dy, const T& s) { return convert<T>(f(static_cast<C>(dy), static_cast<C>(s))); });
  };
  switch (op) {
    case UnaryOp::neg: run([](C dy, C) { return -dy; }); break;
    case UnaryOp::exp: run([](C dy, C y) { return dy * y; }); break;
    case UnaryOp::log: run([](C dy, C x) { return dy / x; }); break;
    case UnaryOp::sqrt: run([](C dy, C y) { return dy / (C(2) * y); }); break;
    case UnaryOp::rsqrt: run([](C dy, C y) { return C(-0.5) * dy * y * y * y; }); break;
    // sign(x) with sign(0) = 0 (a subgradient, as in PyTorch); NaN stays NaN.
    case UnaryOp::abs: run([](C dy, C x) { return x > C(0) ? dy : (x < C(0) ? -dy : (x == C(0) ? C(0) : x)); }); break;
    case UnaryOp::square: run([](C dy, C x) { return C(2) * x * dy; }); break;
    case UnaryOp::tanh: run([](C dy, C y) { return dy * (C(1) - y * y); }); break;
    case UnaryOp::sigmoid: run([](C dy, C y) { return dy * y * (C(1) - y); }); break;
    case UnaryOp::relu: run([](C dy, C y) { return y > C(0) ? dy : C(0); }); break;
    // d/dx x s(x) = s + x s (1 - s) with s = sigmoid(x).
    case UnaryOp::silu:
      run([](C dy, C x) {
        const C s = sigmoid_of(x);
        return dy * s * (C(1) + x * (C(1) - s));
      });
      break;
    // d/dx x Phi(x) = Phi(x) + x phi(x).
    case UnaryOp::gelu: run([](C dy, C x) { return dy * (normal_cdf(x) + x * normal_pdf(x)); }); break;
    // d/dx x s(2u) = s + x * 2 s (1 - s) u'(x).
    case UnaryOp::gelu_tanh:
      run([](C dy, C x) {
        const C s = sigmoid_of(C(2) * gelu_tanh_u(x));
        return dy * (s + x * C(2) * s * (C(1) - s) * gelu_tanh_du(x));
      });
      break;
    // 1 strictly inside the bounds, 0 on and outside them.
    case UnaryOp::clamp: {
      const C lo = static_cast<C>(args.lo), hi = static_cast<C>(args.hi);
      run([lo, hi](C dy, C x) { return (lo < x && x < hi) ? dy : C(0); });
      break;
    }
  }
  return out;
}

// Forward plus the graph record.
template <class T>
Tensor<T> unary(UnaryOp op, const Tensor<T>& x, UnaryArgs args = {}) {
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

}  // namespace kiln
