// Tests for kiln/core/low_precision.hpp.
//
// The reference used here is written independently of the header: values are decoded with
// std::ldexp from the textbook formula, the sorted list of representable values comes from that
// decoder, and the expected result of rounding is derived from the ordering alone (below the
// midpoint -> lower neighbour, above -> upper, at the midpoint -> the neighbour whose mantissa
// LSB is 0). Everything that can be exhaustive is.
#include "kiln/core/low_precision.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using kiln::bf16;
using kiln::fp16;
using kiln::fp8_e4m3;
using kiln::fp8_e5m2;

// ---------------------------------------------------------------------------------------------
// Independent reference description of each format.

struct RefFormat {
  int exp_bits;
  int man_bits;
  int bias;
  bool has_inf;             // IEEE-style inf/NaN; false = e4m3 "FN" (only S.1111.111 is NaN)
  unsigned canonical_nan;   // what any NaN input must convert to
  int nan_patterns;         // how many of the encodings are NaN
};

template <class T>
struct Ref;
template <>
struct Ref<bf16> {
  static constexpr RefFormat fmt{8, 7, 127, true, 0x7FFF, 2 * 127};
  static constexpr unsigned count = 65536;
};
template <>
struct Ref<fp16> {
  static constexpr RefFormat fmt{5, 10, 15, true, 0x7FFF, 2 * 1023};
  static constexpr unsigned count = 65536;
};
template <>
struct Ref<fp8_e4m3> {
  static constexpr RefFormat fmt{4, 3, 7, false, 0x7F, 2};
  static constexpr unsigned count = 256;
};
template <>
struct Ref<fp8_e5m2> {
  static constexpr RefFormat fmt{5, 2, 15, true, 0x7F, 2 * 3};
  static constexpr unsigned count = 256;
};

template <class T>
T make(unsigned b) {
  return T::from_bits(static_cast<decltype(T::bits)>(b));
}

unsigned sign_bit(const RefFormat& f) { return 1u << (f.exp_bits + f.man_bits); }

// Textbook decode. Sets is_nan and returns NaN for NaN encodings.
double ref_decode(const RefFormat& f, unsigned bits, bool& is_nan) {
  const unsigned s = (bits >> (f.exp_bits + f.man_bits)) & 1u;
  const unsigned E = (bits >> f.man_bits) & ((1u << f.exp_bits) - 1u);
  const unsigned M = bits & ((1u << f.man_bits) - 1u);
  const unsigned E_max = (1u << f.exp_bits) - 1u;
  const unsigned M_max = (1u << f.man_bits) - 1u;
  const double sign = s ? -1.0 : 1.0;
  is_nan = false;
  if (f.has_inf && E == E_max) {
    if (M == 0) return sign * std::numeric_limits<double>::infinity();
    is_nan = true;
    return std::numeric_limits<double>::quiet_NaN();
  }
  if (!f.has_inf && E == E_max && M == M_max) {
    is_nan = true;
    return std::numeric_limits<double>::quiet_NaN();
  }
  if (E == 0) return sign * std::ldexp(static_cast<double>(M), 1 - f.bias - f.man_bits);
  return sign * std::ldexp(1.0 + static_cast<double>(M) / std::ldexp(1.0, f.man_bits),
                           static_cast<int>(E) - f.bias);
}

std::uint64_t dbits(double x) { return std::bit_cast<std::uint64_t>(x); }
std::uint32_t fbits(float x) { return std::bit_cast<std::uint32_t>(x); }

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%X", v);
  return buf;
}

// Counts mismatches, reports the first few in detail, and fails the test once at the end.
class Mismatches {
 public:
  explicit Mismatches(std::string what) : what_(std::move(what)) {}
  void check(unsigned got, unsigned want, const std::string& context) {
    if (got == want) return;
    if (++count_ <= 10) {
      ADD_FAILURE() << what_ << ": " << context << " gave " << hex(got) << ", expected "
                    << hex(want);
    }
  }
  ~Mismatches() { EXPECT_EQ(count_, 0) << what_ << ": total mismatches"; }

 private:
  std::string what_;
  long count_ = 0;
};

std::string describe(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g (%a)", x, x);
  return buf;
}

// All conversions from a double that must agree with the constructor inside the finite range.
template <class T>
void check_all_paths(Mismatches& mm, double x, unsigned want) {
  mm.check(T(x).bits, want, "T(double " + describe(x) + ")");
  if constexpr (std::is_same_v<T, fp8_e4m3>) {
    mm.check(kiln::to_fp8_e4m3(x, true).bits, want, "to_fp8_e4m3(sat) " + describe(x));
    mm.check(kiln::to_fp8_e4m3(x, false).bits, want, "to_fp8_e4m3(nosat) " + describe(x));
  }
  if constexpr (std::is_same_v<T, fp8_e5m2>) {
    mm.check(kiln::to_fp8_e5m2(x, true).bits, want, "to_fp8_e5m2(sat) " + describe(x));
    mm.check(kiln::to_fp8_e5m2(x, false).bits, want, "to_fp8_e5m2(nosat) " + describe(x));
  }
  const float xf = static_cast<float>(x);
  if (static_cast<double>(xf) == x) {
    mm.check(T(xf).bits, want, "T(float " + describe(x) + ")");
  }
}

// ---------------------------------------------------------------------------------------------
// Layout and compile-time use.

static_assert(std::is_trivially_copyable_v<bf16> && std::is_trivially_copyable_v<fp16> &&
              std::is_trivially_copyable_v<fp8_e4m3> && std::is_trivially_copyable_v<fp8_e5m2>);
static_assert(std::is_trivially_default_constructible_v<bf16> &&
              std::is_trivially_default_constructible_v<fp8_e5m2>);
static_assert(sizeof(bf16) == 2 && sizeof(fp16) == 2 && sizeof(fp8_e4m3) == 1 &&
              sizeof(fp8_e5m2) == 1);
static_assert(std::is_same_v<decltype(bf16::bits), std::uint16_t> &&
              std::is_same_v<decltype(fp16::bits), std::uint16_t> &&
              std::is_same_v<decltype(fp8_e4m3::bits), std::uint8_t> &&
              std::is_same_v<decltype(fp8_e5m2::bits), std::uint8_t>);
// Conversions are explicit only.
static_assert(!std::is_convertible_v<float, bf16> && !std::is_convertible_v<bf16, float>);
static_assert(!std::is_convertible_v<double, fp8_e4m3> && !std::is_convertible_v<fp16, double>);
// Usable in constant expressions.
static_assert(bf16(1.0f).bits == 0x3F80);
static_assert(fp16(65504.0).bits == 0x7BFF);
static_assert(fp8_e4m3(448.0f).bits == 0x7E);
static_assert(kiln::to_fp8_e5m2(1e9, false).bits == 0x7C);
static_assert(static_cast<float>(fp16::from_bits(0x3C00)) == 1.0f);
static_assert(static_cast<double>(fp8_e5m2::from_bits(0x01)) == 0x1p-16);
static_assert(bf16::from_bits(0x0000) == bf16::from_bits(0x8000));
static_assert(fp8_e4m3::from_bits(0x7F) != fp8_e4m3::from_bits(0x7F));

TEST(LowPrecisionLimits, MaxFinite) {
  EXPECT_EQ(bf16::max_finite(), 3.38953139e38f);
  EXPECT_EQ(bf16::max_finite(), std::ldexp(2.0f - 1.0f / 128.0f, 127));
  EXPECT_EQ(fp16::max_finite(), 65504.0f);
  EXPECT_EQ(fp8_e4m3::max_finite(), 448.0f);
  EXPECT_EQ(fp8_e5m2::max_finite(), 57344.0f);
  EXPECT_EQ(bf16(bf16::max_finite()).bits, 0x7F7F);
  EXPECT_EQ(fp16(fp16::max_finite()).bits, 0x7BFF);
  EXPECT_EQ(fp8_e4m3(fp8_e4m3::max_finite()).bits, 0x7E);
  EXPECT_EQ(fp8_e5m2(fp8_e5m2::max_finite()).bits, 0x7B);
}

// ---------------------------------------------------------------------------------------------
// Decoding: every bit pattern, bit-exact against the reference, both float and double.

template <class T>
void check_decode_all() {
  const RefFormat& f = Ref<T>::fmt;
  Mismatches mm("decode");
  int nans = 0;
  for (unsigned b = 0; b < Ref<T>::count; ++b) {
    bool is_nan = false;
    const double want = ref_decode(f, b, is_nan);
    const T t = make<T>(b);
    const double got_d = static_cast<double>(t);
    const float got_f = static_cast<float>(t);
    if (is_nan) {
      ++nans;
      mm.check(std::isnan(got_d), 1, "isnan(double) of " + hex(b));
      mm.check(std::isnan(got_f), 1, "isnan(float) of " + hex(b));
      // NaN keeps its sign when widened.
      const bool neg = (b & sign_bit(f)) != 0;
      mm.check(std::signbit(got_d), neg, "signbit(double) of NaN " + hex(b));
      mm.check(std::signbit(got_f), neg, "signbit(float) of NaN " + hex(b));
      continue;
    }
    // The reference value is exact in double, and every value of these formats fits in float.
    const float want_f = static_cast<float>(want);
    ASSERT_EQ(static_cast<double>(want_f), want) << "reference value not a float: " << hex(b);
    if (dbits(got_d) != dbits(want)) {
      mm.check(0, 1, "double of " + hex(b) + " = " + describe(got_d) + " vs " + describe(want));
    }
    if (fbits(got_f) != fbits(want_f)) {
      mm.check(0, 1, "float of " + hex(b) + " = " + describe(got_f) + " vs " + describe(want_f));
    }
  }
  EXPECT_EQ(nans, f.nan_patterns);
}

TEST(LowPrecisionDecode, Bf16AllPatterns) {
  check_decode_all<bf16>();
  // bf16 is the top half of a float: a second, even more direct reference.
  for (unsigned b = 0; b < 65536; ++b) {
    const float f = std::bit_cast<float>(b << 16);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fbits(static_cast<float>(bf16::from_bits(static_cast<std::uint16_t>(b)))),
              b << 16);
  }
}
TEST(LowPrecisionDecode, Fp16AllPatterns) { check_decode_all<fp16>(); }
TEST(LowPrecisionDecode, Fp8E4M3AllPatterns) { check_decode_all<fp8_e4m3>(); }
TEST(LowPrecisionDecode, Fp8E5M2AllPatterns) { check_decode_all<fp8_e5m2>(); }

// ---------------------------------------------------------------------------------------------
// Round trip: every non-NaN pattern survives T -> float/double -> T (signed zeros included),
// except e5m2's infinities under the saturating constructor. NaNs come back canonical.

template <class T>
void check_round_trip_all() {
  const RefFormat& f = Ref<T>::fmt;
  Mismatches mm("round trip");
  for (unsigned b = 0; b < Ref<T>::count; ++b) {
    bool is_nan = false;
    ref_decode(f, b, is_nan);
    const T t = make<T>(b);
    if (is_nan) {
      mm.check(T(static_cast<float>(t)).bits, f.canonical_nan, "NaN via float " + hex(b));
      mm.check(T(static_cast<double>(t)).bits, f.canonical_nan, "NaN via double " + hex(b));
      continue;
    }
    // The saturating fp8 constructors cannot produce e5m2's infinities; they give +-max.
    const bool saturates_here = std::is_same_v<T, fp8_e5m2> && (b & 0x7Fu) == 0x7Cu;
    const unsigned want = saturates_here ? b - 1 : b;
    mm.check(T(static_cast<float>(t)).bits, want, "via float " + hex(b));
    mm.check(T(static_cast<double>(t)).bits, want, "via double " + hex(b));
    // The non-saturating conversions round-trip every non-NaN pattern.
    if constexpr (std::is_same_v<T, fp8_e4m3>) {
      mm.check(kiln::to_fp8_e4m3(static_cast<double>(t), false).bits, b, "nosat " + hex(b));
      mm.check(kiln::to_fp8_e4m3(static_cast<float>(t), true).bits, b, "sat " + hex(b));
    }
    if constexpr (std::is_same_v<T, fp8_e5m2>) {
      mm.check(kiln::to_fp8_e5m2(static_cast<double>(t), false).bits, b, "nosat " + hex(b));
      mm.check(kiln::to_fp8_e5m2(static_cast<float>(t), true).bits, want, "sat " + hex(b));
    }
  }
}

TEST(LowPrecisionRoundTrip, Bf16) { check_round_trip_all<bf16>(); }
TEST(LowPrecisionRoundTrip, Fp16) { check_round_trip_all<fp16>(); }
TEST(LowPrecisionRoundTrip, Fp8E4M3) { check_round_trip_all<fp8_e4m3>(); }
TEST(LowPrecisionRoundTrip, Fp8E5M2) { check_round_trip_all<fp8_e5m2>(); }

// ---------------------------------------------------------------------------------------------
// Rounding between every pair of adjacent finite values.

struct Entry {
  double value;
  unsigned bits;
};

template <class T>
std::vector<Entry> sorted_finite_values() {
  const RefFormat& f = Ref<T>::fmt;
  std::vector<Entry> out;
  for (unsigned b = 0; b < Ref<T>::count; ++b) {
    bool is_nan = false;
    const double v = ref_decode(f, b, is_nan);
    if (!is_nan && std::isfinite(v)) out.push_back({v, b});
  }
  // -0 sorts before +0 so that -min_subnormal pairs with -0 and +0 with +min_subnormal.
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    if (a.value != b.value) return a.value < b.value;
    return std::signbit(a.value) && !std::signbit(b.value);
  });
  return out;
}

template <class T>
void check_adjacent_midpoints() {
  const std::vector<Entry> values = sorted_finite_values<T>();
  ASSERT_GT(values.size(), 100u);
  Mismatches mm("rounding");
  long pairs = 0;
  for (std::size_t i = 0; i + 1 < values.size(); ++i) {
    const Entry a = values[i];
    const Entry b = values[i + 1];
    if (a.value == b.value) continue;  // the -0 / +0 pair
    ++pairs;
    // Exactly one neighbour has an even mantissa, i.e. a clear encoding LSB.
    ASSERT_NE(a.bits & 1u, b.bits & 1u) << hex(a.bits) << " " << hex(b.bits);
    const unsigned even = (a.bits & 1u) == 0 ? a.bits : b.bits;
    // a and b have at most 11 significant bits and lie within a factor of two of each other
    // (or one is zero), so the midpoint is exact in double.
    const double mid = (a.value + b.value) / 2;
    ASSERT_TRUE(a.value < mid && mid < b.value);

    check_all_paths<T>(mm, a.value, a.bits);
    check_all_paths<T>(mm, mid, even);
    check_all_paths<T>(mm, std::nextafter(mid, a.value), a.bits);
    check_all_paths<T>(mm, std::nextafter(mid, b.value), b.bits);

    // The same one-float-ulp neighbourhood through the float overload (the midpoints of all
    // these formats are floats; the check is guarded anyway).
    const float mid_f = static_cast<float>(mid);
    if (static_cast<double>(mid_f) == mid) {
      const float below = std::nextafter(mid_f, static_cast<float>(a.value));
      const float above = std::nextafter(mid_f, static_cast<float>(b.value));
      mm.check(T(below).bits, a.bits, "T(float just below midpoint " + describe(mid) + ")");
      mm.check(T(above).bits, b.bits, "T(float just above midpoint " + describe(mid) + ")");
    } else {
      mm.check(0, 1, "midpoint not representable in float: " + describe(mid));
    }
  }
  EXPECT_GT(pairs, 0);
}

TEST(LowPrecisionRounding, Bf16AllAdjacentPairs) { check_adjacent_midpoints<bf16>(); }
TEST(LowPrecisionRounding, Fp16AllAdjacentPairs) { check_adjacent_midpoints<fp16>(); }
TEST(LowPrecisionRounding, Fp8E4M3AllAdjacentPairs) { check_adjacent_midpoints<fp8_e4m3>(); }
TEST(LowPrecisionRounding, Fp8E5M2AllAdjacentPairs) { check_adjacent_midpoints<fp8_e5m2>(); }

// ---------------------------------------------------------------------------------------------
// Subnormal edges, spelled out. s = smallest subnormal = 2^(1 - bias - man_bits):
//   bf16 2^-133, fp16 2^-24, e4m3 2^-9, e5m2 2^-16.

template <class T>
void check_subnormal_edges(double s) {
  const RefFormat& f = Ref<T>::fmt;
  const unsigned neg = sign_bit(f);
  const unsigned m_count = 1u << f.man_bits;  // encoding of the smallest normal
  EXPECT_EQ(s, std::ldexp(1.0, 1 - f.bias - f.man_bits));
  Mismatches mm("subnormal edges");
  check_all_paths<T>(mm, s, 0x1);
  check_all_paths<T>(mm, -s, neg | 0x1);
  // s/2 is a tie between 0 (even) and s (odd): it goes to zero, keeping the sign.
  check_all_paths<T>(mm, s / 2, 0x0);
  check_all_paths<T>(mm, -s / 2, neg);
  check_all_paths<T>(mm, std::nextafter(s / 2, 1.0), 0x1);
  check_all_paths<T>(mm, -std::nextafter(s / 2, 1.0), neg | 0x1);
  check_all_paths<T>(mm, std::nextafter(s / 2, 0.0), 0x0);
  // 1.5 s is a tie between s (odd) and 2 s (even) -> 2 s; 2.5 s -> 2 s as well.
  check_all_paths<T>(mm, 1.5 * s, 0x2);
  check_all_paths<T>(mm, 2.5 * s, 0x2);
  // Largest subnormal L = (2^m - 1) s, smallest normal N = 2^m s = 2^(1 - bias).
  const double L = (m_count - 1) * s;
  const double N = m_count * s;
  EXPECT_EQ(N, std::ldexp(1.0, 1 - f.bias));
  check_all_paths<T>(mm, L, m_count - 1);
  check_all_paths<T>(mm, N, m_count);
  // (L + N) / 2 is a tie and L's mantissa is all ones (odd): rounds up into the normals.
  check_all_paths<T>(mm, (L + N) / 2, m_count);
  check_all_paths<T>(mm, -(L + N) / 2, neg | m_count);
  check_all_paths<T>(mm, std::nextafter((L + N) / 2, 0.0), m_count - 1);
  // Far below the range, including double subnormals: signed zero.
  check_all_paths<T>(mm, 1e-300, 0x0);
  check_all_paths<T>(mm, -1e-300, neg);
  check_all_paths<T>(mm, std::numeric_limits<double>::denorm_min(), 0x0);
  check_all_paths<T>(mm, -std::numeric_limits<double>::denorm_min(), neg);
  // 2^-149 is below half of every s here (bf16's s/2 = 2^-134).
  mm.check(T(std::numeric_limits<float>::denorm_min()).bits, 0x0, "float denorm_min");
}

TEST(LowPrecisionRounding, SubnormalEdges) {
  check_subnormal_edges<bf16>(0x1p-133);
  check_subnormal_edges<fp16>(0x1p-24);
  check_subnormal_edges<fp8_e4m3>(0x1p-9);
  check_subnormal_edges<fp8_e5m2>(0x1p-16);
}

// ---------------------------------------------------------------------------------------------
// Overflow. The "next slot" above the largest finite value M is where the format would put the
// next value if its exponent range were unbounded; the midpoint between M and that slot is the
// overflow threshold, and a tie there goes to whichever has the even mantissa.

TEST(LowPrecisionOverflow, Bf16) {
  // M = 0x7F7F = 1.1111111b * 2^127; next slot 2^128; midpoint 1.11111111b * 2^127 (a float:
  // 0x7F7F8000). M's mantissa is odd, so the tie rounds up -> +inf.
  const double mid = std::ldexp(2.0 - 1.0 / 256.0, 127);
  EXPECT_EQ(fbits(static_cast<float>(mid)), 0x7F7F8000u);
  EXPECT_EQ(bf16(mid).bits, 0x7F80);
  EXPECT_EQ(bf16(static_cast<float>(mid)).bits, 0x7F80);
  EXPECT_EQ(bf16(-mid).bits, 0xFF80);
  EXPECT_EQ(bf16(std::nextafter(mid, 0.0)).bits, 0x7F7F);
  EXPECT_EQ(bf16(std::nextafter(static_cast<float>(mid), 0.0f)).bits, 0x7F7F);
  EXPECT_EQ(bf16(-std::nextafter(mid, 0.0)).bits, 0xFF7F);
  EXPECT_EQ(bf16(std::numeric_limits<float>::max()).bits, 0x7F80);
  EXPECT_EQ(bf16(1e39).bits, 0x7F80);
  EXPECT_EQ(bf16(-std::numeric_limits<double>::max()).bits, 0xFF80);
}

TEST(LowPrecisionOverflow, Fp16) {
  // M = 65504 = 1.1111111111b * 2^15; next slot 2^16; midpoint 65520 ties up to +inf.
  EXPECT_EQ(fp16(65520.0).bits, 0x7C00);
  EXPECT_EQ(fp16(65520.0f).bits, 0x7C00);
  EXPECT_EQ(fp16(-65520.0f).bits, 0xFC00);
  EXPECT_EQ(fp16(std::nextafter(65520.0, 0.0)).bits, 0x7BFF);
  EXPECT_EQ(fp16(std::nextafter(65520.0f, 0.0f)).bits, 0x7BFF);
  EXPECT_EQ(fp16(-std::nextafter(65520.0f, 0.0f)).bits, 0xFBFF);
  EXPECT_EQ(fp16(65536.0f).bits, 0x7C00);
  EXPECT_EQ(fp16(1e10).bits, 0x7C00);
  EXPECT_EQ(fp16(std::numeric_limits<float>::max()).bits, 0x7C00);
}

TEST(LowPrecisionOverflow, Fp8E4M3) {
  // M = 448 = 1.110b * 2^8; the next slot 480 = 1.111b * 2^8 is the NaN encoding; midpoint 464.
  // 464 is a tie and 448's mantissa (110b) is the even one, so 464 -> 448 in both modes.
  EXPECT_EQ(fp8_e4m3(464.0f).bits, 0x7E);
  EXPECT_EQ(kiln::to_fp8_e4m3(464.0, false).bits, 0x7E);
  EXPECT_EQ(kiln::to_fp8_e4m3(-464.0, false).bits, 0xFE);
  EXPECT_EQ(fp8_e4m3(std::nextafter(464.0, 0.0)).bits, 0x7E);
  // Anything above 464 overflows: saturate -> +-448, no-saturate -> NaN with the input's sign.
  const double above = std::nextafter(464.0, 1000.0);
  EXPECT_EQ(fp8_e4m3(above).bits, 0x7E);
  EXPECT_EQ(fp8_e4m3(-above).bits, 0xFE);
  EXPECT_EQ(kiln::to_fp8_e4m3(above, true).bits, 0x7E);
  EXPECT_EQ(kiln::to_fp8_e4m3(above, false).bits, 0x7F);
  EXPECT_EQ(kiln::to_fp8_e4m3(-above, false).bits, 0xFF);
  EXPECT_EQ(fp8_e4m3(std::nextafter(464.0f, 1000.0f)).bits, 0x7E);
  EXPECT_EQ(fp8_e4m3(480.0f).bits, 0x7E);
  EXPECT_EQ(kiln::to_fp8_e4m3(480.0, false).bits, 0x7F);
  EXPECT_EQ(fp8_e4m3(1e30).bits, 0x7E);
  EXPECT_EQ(fp8_e4m3(-1e30f).bits, 0xFE);
  EXPECT_EQ(fp8_e4m3(std::numeric_limits<float>::max()).bits, 0x7E);
  EXPECT_EQ(kiln::to_fp8_e4m3(std::numeric_limits<double>::max(), false).bits, 0x7F);
}

TEST(LowPrecisionOverflow, Fp8E5M2) {
  // M = 57344 = 1.11b * 2^15; next slot 2^16 (the inf encoding); midpoint 61440. M's mantissa
  // is odd, so the tie rounds up and overflows: saturate -> +-57344, no-saturate -> +-inf.
  EXPECT_EQ(fp8_e5m2(61440.0f).bits, 0x7B);
  EXPECT_EQ(fp8_e5m2(-61440.0).bits, 0xFB);
  EXPECT_EQ(kiln::to_fp8_e5m2(61440.0, true).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(61440.0, false).bits, 0x7C);
  EXPECT_EQ(kiln::to_fp8_e5m2(-61440.0, false).bits, 0xFC);
  const double below = std::nextafter(61440.0, 0.0);
  EXPECT_EQ(fp8_e5m2(below).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(below, false).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(-below, false).bits, 0xFB);
  EXPECT_EQ(kiln::to_fp8_e5m2(std::nextafter(61440.0f, 0.0f), false).bits, 0x7B);
  EXPECT_EQ(fp8_e5m2(65536.0).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(65536.0, false).bits, 0x7C);
  EXPECT_EQ(fp8_e5m2(1e30f).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(-1e300, false).bits, 0xFC);
}

// ---------------------------------------------------------------------------------------------
// NaN, infinities, signed zeros.

template <class T>
void check_nan_inputs() {
  const unsigned want = Ref<T>::fmt.canonical_nan;
  const float qf = std::numeric_limits<float>::quiet_NaN();
  const double qd = std::numeric_limits<double>::quiet_NaN();
  const double payload_nan = std::bit_cast<double>(std::uint64_t{0x7FFC000000000001});
  const double snan = std::bit_cast<double>(std::uint64_t{0x7FF0000000000001});
  const float snan_f = std::bit_cast<float>(std::uint32_t{0xFF800001});
  EXPECT_EQ(T(qf).bits, want);
  EXPECT_EQ(T(-qf).bits, want);
  EXPECT_EQ(T(qd).bits, want);
  EXPECT_EQ(T(-qd).bits, want);
  EXPECT_EQ(T(payload_nan).bits, want);
  EXPECT_EQ(T(-payload_nan).bits, want);
  EXPECT_EQ(T(snan).bits, want);
  EXPECT_EQ(T(snan_f).bits, want);
  if constexpr (std::is_same_v<T, fp8_e4m3>) {
    EXPECT_EQ(kiln::to_fp8_e4m3(-qd, false).bits, want);
    EXPECT_EQ(kiln::to_fp8_e4m3(payload_nan, true).bits, want);
  }
  if constexpr (std::is_same_v<T, fp8_e5m2>) {
    EXPECT_EQ(kiln::to_fp8_e5m2(-qd, false).bits, want);
    EXPECT_EQ(kiln::to_fp8_e5m2(payload_nan, true).bits, want);
  }
}

TEST(LowPrecisionSpecials, NaNInputsGiveCanonicalNaN) {
  check_nan_inputs<bf16>();      // 0x7FFF, like __float2bfloat16
  check_nan_inputs<fp16>();      // 0x7FFF, like __float2half
  check_nan_inputs<fp8_e4m3>();  // 0x7F, like __nv_fp8_e4m3(float)
  check_nan_inputs<fp8_e5m2>();  // 0x7F, like __nv_fp8_e5m2(float)
}

TEST(LowPrecisionSpecials, Infinities) {
  const double inf = std::numeric_limits<double>::infinity();
  const float inf_f = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bf16(inf).bits, 0x7F80);
  EXPECT_EQ(bf16(-inf_f).bits, 0xFF80);
  EXPECT_EQ(fp16(inf_f).bits, 0x7C00);
  EXPECT_EQ(fp16(-inf).bits, 0xFC00);
  // Saturating fp8 constructors clamp infinities to the largest finite value.
  EXPECT_EQ(fp8_e4m3(inf_f).bits, 0x7E);
  EXPECT_EQ(fp8_e4m3(-inf).bits, 0xFE);
  EXPECT_EQ(fp8_e5m2(inf).bits, 0x7B);
  EXPECT_EQ(fp8_e5m2(-inf_f).bits, 0xFB);
  // Without saturation: e4m3 has no infinity -> NaN (sign kept, as CUDA does); e5m2 -> inf.
  EXPECT_EQ(kiln::to_fp8_e4m3(inf, false).bits, 0x7F);
  EXPECT_EQ(kiln::to_fp8_e4m3(-inf, false).bits, 0xFF);
  EXPECT_EQ(kiln::to_fp8_e4m3(-inf, true).bits, 0xFE);
  EXPECT_EQ(kiln::to_fp8_e5m2(inf, false).bits, 0x7C);
  EXPECT_EQ(kiln::to_fp8_e5m2(-inf, false).bits, 0xFC);
  EXPECT_EQ(kiln::to_fp8_e5m2(-inf, true).bits, 0xFB);
  // And back.
  EXPECT_EQ(static_cast<float>(bf16::from_bits(0xFF80)), -inf_f);
  EXPECT_EQ(static_cast<double>(fp16::from_bits(0x7C00)), inf);
  EXPECT_EQ(static_cast<double>(fp8_e5m2::from_bits(0xFC)), -inf);
}

TEST(LowPrecisionSpecials, SignedZeros) {
  EXPECT_EQ(bf16(0.0f).bits, 0x0000);
  EXPECT_EQ(bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(fp16(0.0).bits, 0x0000);
  EXPECT_EQ(fp16(-0.0).bits, 0x8000);
  EXPECT_EQ(fp8_e4m3(-0.0f).bits, 0x80);
  EXPECT_EQ(fp8_e5m2(-0.0).bits, 0x80);
  EXPECT_EQ(kiln::to_fp8_e4m3(-0.0, false).bits, 0x80);
  EXPECT_EQ(kiln::to_fp8_e5m2(-0.0, false).bits, 0x80);
  EXPECT_TRUE(std::signbit(static_cast<float>(bf16::from_bits(0x8000))));
  EXPECT_TRUE(std::signbit(static_cast<double>(fp16::from_bits(0x8000))));
  EXPECT_TRUE(std::signbit(static_cast<float>(fp8_e4m3::from_bits(0x80))));
  EXPECT_FALSE(std::signbit(static_cast<double>(fp8_e5m2::from_bits(0x00))));
}

// ---------------------------------------------------------------------------------------------
// Equality compares values: exhaustive for fp8 against the reference's double comparison.

template <class T>
void check_equality_all_pairs() {
  const RefFormat& f = Ref<T>::fmt;
  Mismatches mm("operator==");
  for (unsigned a = 0; a < Ref<T>::count; ++a) {
    for (unsigned b = 0; b < Ref<T>::count; ++b) {
      bool na = false, nb = false;
      const bool want = ref_decode(f, a, na) == ref_decode(f, b, nb);  // IEEE: NaN != anything
      const std::string ctx = hex(a) + " vs " + hex(b);
      mm.check(make<T>(a) == make<T>(b), want, "== " + ctx);
      mm.check(make<T>(a) != make<T>(b), !want, "!= " + ctx);
    }
  }
}

TEST(LowPrecisionCompare, Fp8AllPairs) {
  check_equality_all_pairs<fp8_e4m3>();
  check_equality_all_pairs<fp8_e5m2>();
}

TEST(LowPrecisionCompare, SixteenBit) {
  EXPECT_TRUE(bf16(1.0f) == bf16(1.0));
  EXPECT_TRUE(bf16::from_bits(0x0000) == bf16::from_bits(0x8000));
  EXPECT_FALSE(bf16::from_bits(0x0000) != bf16::from_bits(0x8000));
  EXPECT_TRUE(bf16(1.0f) != bf16(2.0f));
  EXPECT_FALSE(bf16::from_bits(0x7FC0) == bf16::from_bits(0x7FC0));
  EXPECT_TRUE(fp16::from_bits(0x7E00) != fp16::from_bits(0x7E00));
  EXPECT_TRUE(fp16::from_bits(0x7C00) == fp16::from_bits(0x7C00));
  EXPECT_FALSE(fp16::from_bits(0x7C00) == fp16::from_bits(0xFC00));
  // Each pattern against itself, its negation and its neighbour.
  Mismatches mm("16-bit operator==");
  for (unsigned b = 0; b < 65536; ++b) {
    for (unsigned other : {b, b ^ 0x8000u, (b + 1) & 0xFFFFu}) {
      bool n1 = false, n2 = false;
      const bool want_bf = ref_decode(Ref<bf16>::fmt, b, n1) == ref_decode(Ref<bf16>::fmt, other, n2);
      const bool want_h = ref_decode(Ref<fp16>::fmt, b, n1) == ref_decode(Ref<fp16>::fmt, other, n2);
      mm.check(make<bf16>(b) == make<bf16>(other), want_bf, "bf16 " + hex(b) + " vs " + hex(other));
      mm.check(make<fp16>(b) == make<fp16>(other), want_h, "fp16 " + hex(b) + " vs " + hex(other));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-computed values.

TEST(LowPrecisionSpot, Bf16) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3F80);   // float 0x3F800000, top half
  EXPECT_EQ(bf16(-2.0f).bits, 0xC000);  // float 0xC0000000
  // pi as float is 0x40490FDB; the dropped half 0x0FDB < 0x8000 -> truncate.
  EXPECT_EQ(bf16(3.14159265f).bits, 0x4049);
  // 1/3 as float is 0x3EAAAAAB; dropped 0xAAAB > 0x8000 -> round up to 0x3EAB.
  EXPECT_EQ(bf16(1.0f / 3.0f).bits, 0x3EAB);
  // 1 + 2^-8 is halfway between 0x3F80 (even) and 0x3F81 -> 0x3F80.
  EXPECT_EQ(bf16(1.0f + 0x1p-8f).bits, 0x3F80);
  // 1 + 3*2^-8 is halfway between 0x3F81 (odd) and 0x3F82 -> 0x3F82.
  EXPECT_EQ(bf16(1.0f + 3 * 0x1p-8f).bits, 0x3F82);
  EXPECT_EQ(bf16(3.38953139e38f).bits, 0x7F7F);
  EXPECT_EQ(static_cast<double>(bf16::from_bits(0x0001)), 0x1p-133);
  EXPECT_EQ(static_cast<float>(bf16::from_bits(0x4049)), 3.140625f);
}

TEST(LowPrecisionSpot, Fp16) {
  EXPECT_EQ(fp16(1.0f).bits, 0x3C00);     // exponent 15 << 10
  EXPECT_EQ(fp16(-1.5f).bits, 0xBE00);    // sign | 15 << 10 | 0x200
  EXPECT_EQ(fp16(65504.0f).bits, 0x7BFF); // 1.1111111111b * 2^15
  // 1 + 2^-11: halfway between 0x3C00 (even) and 0x3C01 -> 0x3C00.
  EXPECT_EQ(fp16(1.0 + 0x1p-11).bits, 0x3C00);
  // 1 + 3*2^-11: halfway between 0x3C01 (odd) and 0x3C02 -> 0x3C02.
  EXPECT_EQ(fp16(1.0 + 3 * 0x1p-11).bits, 0x3C02);
  // 0.1f = 0x3DCCCCCD = 1.6000000238 * 2^-4: exponent field 11 -> 0x2C00; mantissa
  // 0.6000000238 * 1024 = 614.4 -> 614 = 0x266 -> 0x2E66.
  EXPECT_EQ(fp16(0.1f).bits, 0x2E66);
  EXPECT_EQ(fp16(0x1p-14).bits, 0x0400);  // smallest normal
  EXPECT_EQ(fp16(0x1p-24).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(static_cast<float>(fp16::from_bits(0x03FF)), 1023 * 0x1p-24f);
  EXPECT_EQ(static_cast<float>(fp16::from_bits(0x3555)), 0.333251953125f);  // 1365/4096
}

TEST(LowPrecisionSpot, Fp8E4M3) {
  EXPECT_EQ(fp8_e4m3(448.0f).bits, 0x7E);        // 1.110b * 2^8: exponent 15, mantissa 6
  EXPECT_EQ(fp8_e4m3(-0.001953125).bits, 0x81);  // -2^-9, smallest subnormal
  EXPECT_EQ(fp8_e4m3(1.0f).bits, 0x38);          // exponent 7 << 3
  EXPECT_EQ(fp8_e4m3(0.5).bits, 0x30);           // exponent 6 << 3
  EXPECT_EQ(fp8_e4m3(3.0f).bits, 0x44);          // 1.1b * 2^1: exponent 8, mantissa 4
  EXPECT_EQ(fp8_e4m3(240.0f).bits, 0x77);        // 1.111b * 2^7: exponent 14, mantissa 7
  EXPECT_EQ(fp8_e4m3(0x1p-6).bits, 0x08);        // smallest normal
  EXPECT_EQ(fp8_e4m3(0.875 * 0x1p-6).bits, 0x07); // largest subnormal, 7/8 * 2^-6
  // 1.0625 = 1 + 2^-4 is halfway between 1.0 (0x38, even) and 1.125 (0x39) -> 0x38.
  EXPECT_EQ(fp8_e4m3(1.0625f).bits, 0x38);
  // 1.1875 is halfway between 1.125 (0x39, odd) and 1.25 (0x3A) -> 0x3A.
  EXPECT_EQ(fp8_e4m3(1.1875f).bits, 0x3A);
  EXPECT_EQ(static_cast<float>(fp8_e4m3::from_bits(0xFE)), -448.0f);
  EXPECT_EQ(static_cast<float>(fp8_e4m3::from_bits(0x78)), 256.0f);  // exponent 15 is finite
}

TEST(LowPrecisionSpot, Fp8E5M2) {
  EXPECT_EQ(fp8_e5m2(57344.0f).bits, 0x7B);  // 1.11b * 2^15: exponent 30 -> 0x78 | 3
  EXPECT_EQ(fp8_e5m2(1.0).bits, 0x3C);       // exponent 15 << 2
  EXPECT_EQ(fp8_e5m2(-2.0f).bits, 0xC0);     // sign | exponent 16 << 2
  EXPECT_EQ(fp8_e5m2(0x1p-16).bits, 0x01);   // smallest subnormal
  EXPECT_EQ(fp8_e5m2(0x1p-14).bits, 0x04);   // smallest normal
  // 1.125 is halfway between 1.0 (0x3C, even) and 1.25 (0x3D) -> 0x3C.
  EXPECT_EQ(fp8_e5m2(1.125f).bits, 0x3C);
  // 1.375 is halfway between 1.25 (0x3D, odd) and 1.5 (0x3E) -> 0x3E.
  EXPECT_EQ(fp8_e5m2(1.375).bits, 0x3E);
  // 0.1 = 1.6 * 2^-4: exponent 11 -> 0x2C; mantissa 0.6 * 4 = 2.4 -> 2 -> 0x2E (0.09375).
  EXPECT_EQ(fp8_e5m2(0.1).bits, 0x2E);
  EXPECT_EQ(static_cast<float>(fp8_e5m2::from_bits(0x2E)), 0.09375f);
}

// ---------------------------------------------------------------------------------------------
// Double inputs are rounded once. Each x below sits within half a float ulp of a midpoint of
// the target format, so static_cast<float>(x) lands exactly on the midpoint and a second
// rounding (ties to even) would pick the wrong neighbour. The float-path result is asserted
// too, to show that each case really discriminates.

TEST(LowPrecisionDoublePath, SingleRounding) {
  // bf16 around 1: spacing 2^-7. Float spacing there is 2^-23, so 2^-30 vanishes in float.
  const double b1 = 1.0 + 0x1p-8 + 0x1p-30;  // just above the 0x3F80/0x3F81 midpoint
  EXPECT_EQ(bf16(b1).bits, 0x3F81);
  EXPECT_EQ(bf16(static_cast<float>(b1)).bits, 0x3F80);
  const double b2 = 1.0 + 3 * 0x1p-8 - 0x1p-30;  // just below the 0x3F81/0x3F82 midpoint
  EXPECT_EQ(bf16(b2).bits, 0x3F81);
  EXPECT_EQ(bf16(static_cast<float>(b2)).bits, 0x3F82);
  EXPECT_EQ(bf16(-b1).bits, 0xBF81);
  // bf16 just below the overflow threshold 1.11111111b * 2^127 by 2^80 (float spacing 2^104).
  const double b3 = std::ldexp(2.0 - 1.0 / 256.0, 127) - 0x1p80;
  EXPECT_EQ(bf16(b3).bits, 0x7F7F);
  EXPECT_EQ(bf16(static_cast<float>(b3)).bits, 0x7F80);

  // fp16 around 1: spacing 2^-10.
  const double h1 = 1.0 + 0x1p-11 + 0x1p-30;
  EXPECT_EQ(fp16(h1).bits, 0x3C01);
  EXPECT_EQ(fp16(static_cast<float>(h1)).bits, 0x3C00);
  const double h2 = 1.0 + 3 * 0x1p-11 - 0x1p-30;
  EXPECT_EQ(fp16(h2).bits, 0x3C01);
  EXPECT_EQ(fp16(static_cast<float>(h2)).bits, 0x3C02);
  // fp16 subnormal: just above half the smallest subnormal (float spacing at 2^-25 is 2^-48).
  const double h3 = 0x1p-25 + 0x1p-60;
  EXPECT_EQ(fp16(h3).bits, 0x0001);
  EXPECT_EQ(fp16(static_cast<float>(h3)).bits, 0x0000);
  // fp16 just below the overflow threshold 65520.
  const double h4 = 65520.0 - 0x1p-20;
  EXPECT_EQ(fp16(h4).bits, 0x7BFF);
  EXPECT_EQ(fp16(static_cast<float>(h4)).bits, 0x7C00);

  // e4m3 around 1: spacing 2^-3.
  const double e1 = 1.0 + 0x1p-4 + 0x1p-30;
  EXPECT_EQ(fp8_e4m3(e1).bits, 0x39);
  EXPECT_EQ(fp8_e4m3(static_cast<float>(e1)).bits, 0x38);
  // e4m3 just above the overflow tie 464: overflows only on the double path.
  const double e2 = 464.0 + 0x1p-20;
  EXPECT_EQ(kiln::to_fp8_e4m3(e2, false).bits, 0x7F);
  EXPECT_EQ(kiln::to_fp8_e4m3(static_cast<float>(e2), false).bits, 0x7E);

  // e5m2 around 1: spacing 2^-2.
  const double f1 = 1.0 + 0x1p-3 + 0x1p-30;
  EXPECT_EQ(fp8_e5m2(f1).bits, 0x3D);
  EXPECT_EQ(fp8_e5m2(static_cast<float>(f1)).bits, 0x3C);
  // e5m2 just below the overflow tie 61440: stays finite only on the double path.
  const double f2 = 61440.0 - 0x1p-20;
  EXPECT_EQ(kiln::to_fp8_e5m2(f2, false).bits, 0x7B);
  EXPECT_EQ(kiln::to_fp8_e5m2(static_cast<float>(f2), false).bits, 0x7C);
}

}  // namespace
