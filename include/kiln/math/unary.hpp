// The scalar math of kiln's elementwise unary ops (front-end ops/unary.hpp, CUDA kernels
// kernels/elementwise/unary.cuh): the op codes, and for each op two functors in kiln::math, the
// function (X) and its backward, g * f'(.) (XGrad). Both are KILN_HD, so the CPU loops and the
// CUDA kernels compute the same formula, in compute_t<T> (float for bf16/fp16/fp8).
//
// Where f' is cheaper in terms of the output y than of the input x (exp: y, tanh: 1 - y^2,
// sigmoid: y(1 - y), sqrt: 1/(2y), rsqrt: -y^3/2, relu: y > 0), the backward functor takes y
// (the front-end saves y instead of x: detail::unary_saves_output in ops/unary.hpp).
// math::with_unary / with_unary_grad pick the functor from the enum. g++ compiles this header.
#pragma once

#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>

#include "kiln/core/low_precision.hpp"

namespace kiln {

enum class UnaryOp { neg, exp, log, sqrt, rsqrt, abs, square, tanh, sigmoid, relu, silu, gelu, gelu_tanh, clamp };

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
// cancels to 0 for x below about -6 (float) where the true value is still representable. In the
// negative tail erfc is ill-conditioned in its argument (relative condition 2z² at z = -x/sqrt2:
// 18 at x = -4.3), so the float rounding of -x/sqrt2 alone would cost ~10 ulp of the result; float
// evaluates it in double and rounds once.
template <class C>
KILN_HD C normal_cdf(C x) {
  if constexpr (std::is_same_v<C, float>) {
    return static_cast<float>(0.5 * std::erfc(-static_cast<double>(x) / std::numbers::sqrt2_v<double>));
  } else {
    return C(0.5) * std::erfc(-x / std::numbers::sqrt2_v<C>);
  }
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

}  // namespace detail

}  // namespace kiln
