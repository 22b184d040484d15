// The scalar math of kiln's broadcasting binary ops (front-end ops/binary.hpp, CUDA kernel
// kernels/elementwise/binary.cuh): the op codes and one functor per op, shared by the CPU loops
// and the CUDA kernels (KILN_HD makes them callable on the device when compiled by nvcc), so both
// backends compute the same formula. g++ compiles this header.
#pragma once

#include <cmath>

#include "kiln/core/low_precision.hpp"

namespace kiln {

enum class BinaryOp { add, sub, mul, div, pow, maximum, minimum };

namespace math {
struct Add { template <class C> KILN_HD C operator()(C x, C y) const { return x + y; } };
struct Sub { template <class C> KILN_HD C operator()(C x, C y) const { return x - y; } };
struct Mul { template <class C> KILN_HD C operator()(C x, C y) const { return x * y; } };
struct Div { template <class C> KILN_HD C operator()(C x, C y) const { return x / y; } };
struct Pow { template <class C> KILN_HD C operator()(C x, C y) const { return static_cast<C>(::pow(x, y)); } };
// NaN propagates (as in PyTorch): comparisons with NaN are false, so test explicitly.
struct Maximum { template <class C> KILN_HD C operator()(C x, C y) const { return (x != x || x > y) ? x : y; } };
struct Minimum { template <class C> KILN_HD C operator()(C x, C y) const { return (x != x || x < y) ? x : y; } };

// Calls f(functor) with the functor of `op`.
template <class F>
decltype(auto) with_binary(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::add: return f(Add{});
    case BinaryOp::sub: return f(Sub{});
    case BinaryOp::mul: return f(Mul{});
    case BinaryOp::div: return f(Div{});
    case BinaryOp::pow: return f(Pow{});
    case BinaryOp::maximum: return f(Maximum{});
    case BinaryOp::minimum: break;
  }
  return f(Minimum{});
}
}  // namespace math

namespace detail {

inline const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::pow: return "pow";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::minimum: return "minimum";
  }
  return "?";
}

}  // namespace detail

}  // namespace kiln
