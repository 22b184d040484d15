// Scalar math of the reductions (sum, mean, max, min, argmax, argmin), shared by the CPU path
// (ops/reduce.hpp and ops/reduce_max.hpp over backend/cpu/reduce.hpp) and the CUDA kernels
// (kernels/reduce/): which reduction, the sum's result, the extrema's identities, NaN and tie
// rules, and the hit mask of the amax/amin gradient. Host and device functions (KILN_HD); g++
// compiles this header alone.
#pragma once

#include <cstdint>
#include <limits>

#include "kiln/core/low_precision.hpp"  // KILN_HD

namespace kiln::math {

// What a reduction computes: values (sum, mean, max, min), or the index of the extremum (argmax,
// argmin; the extreme value may come with it).
enum class ReduceOp : std::int32_t { sum, mean, max, min, argmax, argmin };

// The sum or mean of n elements from their sum accumulated in double (every element type: a float
// sum over 2^28 elements keeps its last bit).
KILN_HD constexpr double sum_result(double acc, std::int64_t n, bool mean) {
  return mean ? acc / static_cast<double>(n) : acc;
}

// Where an extremum fold starts: -inf for max, +inf for min, so every element (infinities
// included) wins over it.
template <class C, bool IsMax>
KILN_HD constexpr C extremum_identity() {
  return IsMax ? -std::numeric_limits<C>::infinity() : std::numeric_limits<C>::infinity();
}

// Whether x replaces `best` in a fold: best is not NaN and x is NaN or strictly more extreme. The
// first NaN wins for good and, on ties, the element seen first stays.
template <class C, bool IsMax>
KILN_HD constexpr bool more_extreme(C x, C best) {
  return best == best && (x != x || (IsMax ? x > best : x < best));
}

// One step of an extremum fold: best = x when more_extreme(x, best). (Written out rather than
// through more_extreme: the CUDA reduction's column kernel compiles to 12 registers fewer.)
template <class C, bool IsMax>
KILN_HD constexpr void extremum_step(C& best, C x) {
  if (best == best && (x != x || (IsMax ? x > best : x < best))) best = x;
}

// Two partial extrema combined (a from elements before b's): a NaN wins (a's first), else the
// more extreme (a on ties): the value that folding b's elements into a with extremum_step gives.
template <class C, bool IsMax>
KILN_HD constexpr C extremum_combine(C a, C b) {
  if (a != a) return a;
  if (b != b) return b;
  return (IsMax ? b > a : b < a) ? b : a;
}

// Whether the {value, index} pair (av, ai) comes before (bv, bi) for argmax/argmin: NaN first,
// then the more extreme value, then the smaller index. A strict total order on distinct indices,
// so folding pairs in any order (a parallel tree) gives the sequential answer: the first NaN, else
// the first index of the extremum.
template <class C, bool IsMax>
KILN_HD constexpr bool arg_before(C av, std::int64_t ai, C bv, std::int64_t bi) {
  const bool a_nan = av != av, b_nan = bv != bv;
  if (a_nan || b_nan) return a_nan && (!b_nan || ai < bi);
  if (av == bv) return ai < bi;
  return IsMax ? av > bv : av < bv;
}

// 1 where an element equals the extremum (a NaN equals a NaN result), else 0: the elements that
// share amax/amin's gradient. Shared by the CPU loop and the CUDA kernel.
struct ExtremumHit {
  template <class C>
  KILN_HD C operator()(C x, C m) const {
    return (x == m || (x != x && m != m)) ? C(1) : C(0);
  }
};

}  // namespace kiln::math
