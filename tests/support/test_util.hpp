// Helpers shared by the tests: reference comparisons and error-message assertions.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <kiln/kiln.hpp>

namespace kiln::testing {

// Whether this binary runs under AddressSanitizer: scripts/test.sh's second pass, compiled at -O0,
// where Eigen's products and the CPU loops run tens of times slower. Tests whose point is
// statistics or convergence (100k samples, tens of training steps) do a few iterations there:
// the sanitizers look for memory errors and undefined behaviour, which those iterations exercise;
// the full counts and their assertions run unsanitized (in CI, build-test's test_full_counts:
// tests/CMakeLists.txt builds every test file that mentions kSanitized into it).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// How far `a` is from a reference, computed in double: the relative Frobenius norm that the tests
// compare with their tolerance, and beside it the largest elementwise error and where it is, so
// that a failure shows whether the whole tensor drifted or a few elements are wrong (a norm of
// 1e-2 over 16M elements hides hundreds of elements off by 100%). It compares and converts like
// the double `relative` (EXPECT_LE(relative_error(a, ref), tol)), and GoogleTest prints all of it
// when an assertion fails.
struct ErrorStats {
  double relative = 0.0;      // ||a - ref|| / ||ref|| (||a - ref|| when ref is all zeros); inf if NaN/inf positions differ
  double max_abs = 0.0;       // max |a_i - ref_i| over the finite pairs
  std::size_t index = 0;      // flat index of that element (or of the first NaN/inf mismatch)
  double value = 0.0, reference = 0.0;  // a and ref there
  double ref_rms = 0.0;       // sqrt(mean(ref²)): the scale the elementwise error is measured against
  double error_sq = 0.0, ref_sq = 0.0;  // ||a - ref||² and ||ref||² (finite pairs): to pool several tensors
  std::size_t count = 0;      // elements compared
  std::vector<std::int64_t> shape;  // of the tensors, when known: the index is printed per dimension

  operator double() const { return relative; }  // NOLINT(google-explicit-constructor): reads as the norm
};

inline void PrintTo(const ErrorStats& e, std::ostream* os) {
  *os << "relative error " << e.relative << " over " << e.count << " elements; max |a - ref| " << e.max_abs
      << " (" << (e.ref_rms > 0.0 ? e.max_abs / e.ref_rms : e.max_abs) << " of ref's rms " << e.ref_rms << ") at ";
  if (e.shape.empty()) {
    *os << "flat index " << e.index;
  } else {
    std::vector<std::int64_t> at(e.shape.size());
    std::size_t rest = e.index;
    for (std::size_t d = e.shape.size(); d-- > 0;) {
      const auto extent = static_cast<std::size_t>(e.shape[d] > 0 ? e.shape[d] : 1);
      at[d] = static_cast<std::int64_t>(rest % extent);
      rest /= extent;
    }
    *os << "[";
    for (std::size_t d = 0; d < at.size(); ++d) *os << (d ? ", " : "") << at[d];
    *os << "]";
  }
  *os << ": a " << e.value << ", ref " << e.reference;
}

inline std::ostream& operator<<(std::ostream& os, const ErrorStats& e) {
  PrintTo(e, &os);
  return os;
}

template <class A, class B>
ErrorStats relative_error(const std::vector<A>& a, const std::vector<B>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  ErrorStats e;
  double num = 0.0, den = 0.0;
  bool mismatch = false;  // NaN or inf where the other side has something else
  for (std::size_t i = 0; i < a.size() && i < ref.size(); ++i) {
    const double x = static_cast<double>(a[i]), r = static_cast<double>(ref[i]);
    ++e.count;
    const bool special_x = std::isnan(x) || std::isinf(x), special_r = std::isnan(r) || std::isinf(r);
    if (special_x || special_r) {
      const bool same = (std::isnan(x) && std::isnan(r)) || x == r;
      if (!same && !mismatch) {
        mismatch = true;
        e.index = i;
        e.value = x;
        e.reference = r;
      }
      continue;
    }
    const double d = std::abs(x - r);
    if (d > e.max_abs && !mismatch) {
      e.max_abs = d;
      e.index = i;
      e.value = x;
      e.reference = r;
    }
    num += d * d;
    den += r * r;
  }
  e.error_sq = num;
  e.ref_sq = den;
  if (e.count > 0) e.ref_rms = std::sqrt(den / static_cast<double>(e.count));
  e.relative = mismatch ? INFINITY : den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
  return e;
}

template <class A, class B>
ErrorStats relative_error(const Tensor<A>& a, const Tensor<B>& ref) {
  EXPECT_EQ(a.shape(), ref.shape());
  ErrorStats e = relative_error(a.to_vector(), ref.to_vector());
  e.shape.assign(ref.shape().begin(), ref.shape().end());
  return e;
}

}  // namespace kiln::testing

// Asserts that `statement` throws kiln::Error whose message contains every given substring.
#define EXPECT_KILN_ERROR(statement, ...)                                                   \
  do {                                                                                      \
    bool kiln_thrown_ = false;                                                              \
    try {                                                                                   \
      statement;                                                                            \
    } catch (const kiln::Error& e) {                                                        \
      kiln_thrown_ = true;                                                                  \
      const std::string kiln_msg_ = e.what();                                               \
      for (const std::string& kiln_part_ : std::vector<std::string>{__VA_ARGS__})           \
        EXPECT_NE(kiln_msg_.find(kiln_part_), std::string::npos)                            \
            << "message \"" << kiln_msg_ << "\" lacks \"" << kiln_part_ << "\"";            \
    }                                                                                       \
    EXPECT_TRUE(kiln_thrown_) << #statement " did not throw kiln::Error";                   \
  } while (0)

// Runs kiln::gradcheck and reports mismatches.
#define EXPECT_GRADCHECK(f, ...)                                                            \
  do {                                                                                      \
    auto kiln_r_ = kiln::gradcheck(f, __VA_ARGS__);                                         \
    EXPECT_TRUE(kiln_r_.ok) << kiln_r_.report;                                              \
  } while (0)
