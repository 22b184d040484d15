// Helpers shared by the tests: reference comparisons and error-message assertions.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <kiln/kiln.hpp>

namespace kiln::testing {

// Whether this binary runs under AddressSanitizer: scripts/test.sh's second pass, compiled at -O0,
// where Eigen's products and the CPU loops run tens of times slower. Tests whose point is
// statistics or convergence (100k samples, tens of training steps) do a few iterations there:
// the sanitizers look for memory errors and undefined behaviour, which those iterations exercise;
// the full counts and their assertions run in the optimised pass.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// ||a - ref|| / ||ref|| (Frobenius), computed in double; infinite if NaN positions differ.
template <class A, class B>
double relative_error(const std::vector<A>& a, const std::vector<B>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size() && i < ref.size(); ++i) {
    const double x = static_cast<double>(a[i]), r = static_cast<double>(ref[i]);
    if (std::isnan(x) != std::isnan(r)) return INFINITY;
    if (std::isnan(r)) continue;
    if (std::isinf(x) || std::isinf(r)) {
      if (x != r) return INFINITY;
      continue;
    }
    num += (x - r) * (x - r);
    den += r * r;
  }
  return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

template <class A, class B>
double relative_error(const Tensor<A>& a, const Tensor<B>& ref) {
  EXPECT_EQ(a.shape(), ref.shape());
  return relative_error(a.to_vector(), ref.to_vector());
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
