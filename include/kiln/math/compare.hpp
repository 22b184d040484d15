// The scalar math of kiln's comparisons and logical ops (front-end ops/compare.hpp, CUDA kernels
// kernels/elementwise/compare.cuh): the op codes and __host__ __device__ functions shared by the
// CPU loops and the CUDA kernels. g++ compiles this header.
#pragma once

#include "kiln/core/low_precision.hpp"

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

}  // namespace detail

}  // namespace kiln
