// fp8::ScaleDivider (math/fp8.hpp), the CUDA quantization kernels' division: it must equal the
// IEEE quotient divide_rn(x, scale) bit for bit, since the CPU quantization (the reference) divides.
// The quotient's last bit matters wherever it lies next to an e4m3 rounding boundary, so these
// tests compare the float quotients themselves, not only the e4m3 bytes.
//
// x / scale is invariant, bit for bit, under x -> x·2^k while no range is left, so one binade of
// x ([1, 2): all 2^23 floats) against a scale covers every normal x for that scale's mantissa.
// The scales: mantissas at the edges (1, 1 + 2^-23, 2 - 2^-23), the scales the recipe makes from
// round amaxes (amax / 448), and random ones; exponents from the 2^-60 switch to the largest.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <kiln/kiln.hpp>
#include <kiln/math/fp8.hpp>

using namespace kiln;

namespace {

std::uint32_t bits(float v) { return detail::bit_cast<std::uint32_t>(v); }

// Mismatches of the divider against divide_rn over all x in [lo, 2·lo) (both signs).
std::int64_t binade_mismatches(float scale, float lo) {
  const fp8::ScaleDivider divide(scale);
  std::int64_t bad = 0;
  const std::uint32_t first = bits(lo);
  for (std::uint32_t m = 0; m < (1u << 23); ++m) {
    const float x = detail::bit_cast<float>(first + m);
    if (bits(divide(x)) != bits(fp8::divide_rn(x, scale))) ++bad;
    if (bits(divide(-x)) != bits(fp8::divide_rn(-x, scale))) ++bad;
  }
  return bad;
}

TEST(Fp8Divider, EqualsTheIeeeQuotientOnWholeBinades) {
  std::vector<float> scales = {1.0f, std::nextafter(1.0f, 2.0f), std::nextafter(2.0f, 1.0f), 448.0f / 448.0f,
                               1.0f / 448.0f, 3.0f / 448.0f, 0.1f / 448.0f, 1e-4f / 448.0f, 7.0f, 1.5f};
  std::mt19937 gen(20261205);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, (1u << 23) - 1);
  for (int i = 0; i < 6; ++i) scales.push_back(detail::bit_cast<float>(0x3F800000u | mantissa(gen)));
  for (const float s : scales) {
    // x in [1, 2): quotients near 1/s, in e4m3's range for s around 1/448 .. 1.
    EXPECT_EQ(binade_mismatches(s, 1.0f), 0) << "scale " << s;
  }
}

TEST(Fp8Divider, EqualsTheIeeeQuotientAtEveryExponent) {
  // Random x and scales at exponents across float's range, tiny scales (the 2^64 pre-scaling) and
  // huge ones included; x limited to |x| <= 448·scale·4, as a tile's elements are (|x| <= amax).
  std::mt19937 gen(7);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, (1u << 23) - 1);
  std::uniform_int_distribution<int> exponent(-120, 120);
  std::uniform_real_distribution<float> fraction(-1.0f, 1.0f);
  std::int64_t bad = 0, checked = 0;
  for (int i = 0; i < 4000; ++i) {
    const float s = std::ldexp(detail::bit_cast<float>(0x3F800000u | mantissa(gen)), exponent(gen) - 9);
    if (!std::isnormal(s)) continue;
    const fp8::ScaleDivider divide(s);
    for (int j = 0; j < 2000; ++j) {
      // Quotients spread over [2^-14, 448]: the e4m3 range and a margin below it.
      const float q = std::ldexp(fraction(gen), -static_cast<int>(gen() % 24)) * 448.0f;
      const float x = q * s;
      if (!std::isfinite(x)) continue;
      ++checked;
      if (bits(divide(x)) != bits(fp8::divide_rn(x, s))) ++bad;
    }
  }
  EXPECT_GT(checked, 7000000);
  EXPECT_EQ(bad, 0);
}

TEST(Fp8Divider, QuotientsNextToE4m3BoundariesAndSpecialValues) {
  // x chosen so that x / scale lies within a few ulps of an e4m3 rounding midpoint (a value halfway
  // between two neighbouring e4m3 values): where a wrong last bit would change the byte.
  std::mt19937 gen(3);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, (1u << 23) - 1);
  std::int64_t bad = 0;
  for (int i = 0; i < 200; ++i) {
    const float s =
        std::ldexp(detail::bit_cast<float>(0x3F800000u | mantissa(gen)), static_cast<int>(gen() % 200) - 140);
    const fp8::ScaleDivider divide(s);
    for (int e = -10; e <= 8; ++e)
      for (int m = 0; m < 16; ++m) {
        const float midpoint = std::ldexp(1.0f + (2 * m + 1) / 16.0f, e);  // e4m3 steps of 1/8 at exponent e
        const float x0 = midpoint * s;
        float x = x0;
        for (int k = 0; k < 8; ++k) x = std::nextafter(x, 0.0f);
        for (int k = 0; k < 16; ++k, x = std::nextafter(x, INFINITY))
          if (std::isfinite(x) && bits(divide(x)) != bits(fp8::divide_rn(x, s))) ++bad;
      }
  }
  EXPECT_EQ(bad, 0);

  const fp8::ScaleDivider d(0.25f);
  EXPECT_EQ(bits(d(0.0f)), bits(0.0f));
  EXPECT_EQ(bits(d(-0.0f)), bits(-0.0f));
  EXPECT_TRUE(std::isnan(d(NAN)));
  // Quotients below 2^-12 may differ in their last bits (see ScaleDivider), never in the e4m3 byte.
  const float subnormal = std::ldexp(1.0f, -140);
  EXPECT_EQ(fp8_e4m3(d(-subnormal)).bits, fp8_e4m3(fp8::divide_rn(-subnormal, 0.25f)).bits);
  EXPECT_EQ(fp8_e4m3(d(-subnormal)).bits, 0x80);
  const fp8::ScaleDivider infinite(INFINITY);
  EXPECT_EQ(bits(infinite(3.0f)), bits(0.0f));
  EXPECT_EQ(bits(infinite(-3.0f)), bits(-0.0f));
  EXPECT_TRUE(std::isnan(infinite(INFINITY)));
  // The smallest scale the recipe allows (amax_floor 1e-30), with x down to subnormals.
  const float tiny = fp8::tile_scale(0.0f, 1e-30f, false);
  const fp8::ScaleDivider t(tiny);
  for (float x = 448.0f * tiny; x > 0.0f; x *= 0.37f) {
    if (x >= std::ldexp(tiny, -12)) {
      EXPECT_EQ(bits(t(x)), bits(fp8::divide_rn(x, tiny))) << x;
    }
    EXPECT_EQ(fp8_e4m3(t(-x)).bits, fp8_e4m3(fp8::divide_rn(-x, tiny)).bits) << x;
  }
}

}  // namespace
