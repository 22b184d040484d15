// Exact host-side storage types for bfloat16, IEEE binary16 and the two OCP FP8 formats.
//
// Each type is a trivially-copyable wrapper around its raw bit pattern. Conversions from
// float/double round to nearest, ties to even, in ONE step from the input value (a double is
// never rounded to float first), and reproduce CUDA's conversions bit for bit:
//
//   kiln::bf16(x)     == __float2bfloat16(x) / __double2bfloat16(x)              (cuda_bf16.h)
//   kiln::fp16(x)     == __float2half(x) / __double2half(x)                      (cuda_fp16.h)
//   kiln::fp8_e4m3(x) == __nv_fp8_e4m3(x): __NV_SATFINITE, __NV_E4M3             (cuda_fp8.h)
//   kiln::fp8_e5m2(x) == __nv_fp8_e5m2(x): __NV_SATFINITE, __NV_E5M2
//   kiln::to_fp8_*(x, false)  == __nv_cvt_*_to_fp8(x, __NV_NOSAT, ...)
//
// One deliberate exception, NaN inputs: every NaN converts to the canonical pattern "all ones,
// sign clear" (0x7FFF for bf16/fp16, 0x7F for both fp8 formats). That is what CUDA does for
// float inputs everywhere, and for double inputs to bf16/fp16. CUDA's *double* -> fp8 routine
// (__nv_cvt_double_to_fp8) instead keeps the NaN's sign (0xFF for -NaN) and, for e5m2, its
// leading payload bits (a default quiet NaN gives 0x7E); we do not copy that quirk, so that
// T(x) == T(double(x)) holds for every float x, NaN included.
//
// Widening conversions (to float or double) are exact: every value of every format here is
// representable in float.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#ifndef KILN_HD
#ifdef __CUDACC__
#define KILN_HD __host__ __device__
#else
#define KILN_HD
#endif
#endif

namespace kiln {
namespace detail {

// How a format uses its all-ones exponent field.
enum class special_encoding : std::uint8_t {
  // IEEE 754 style (bf16, fp16, e5m2): all-ones exponent with zero mantissa is +-inf, with a
  // non-zero mantissa NaN. The largest finite value has exponent all-ones minus one.
  ieee,
  // OCP "FN" style (e4m3): no infinities. Only S.1111.111 is NaN, so the all-ones exponent
  // still holds finite values; the largest is S.1111.110.
  finite_nan,
};

// Result for finite inputs whose correctly rounded magnitude exceeds the largest finite value,
// and for +-inf inputs.
enum class overflow_policy : std::uint8_t {
  to_inf,    // IEEE behaviour (bf16, fp16, e5m2 with __NV_NOSAT)
  saturate,  // clamp to +-max finite (__NV_SATFINITE)
  to_nan,    // e4m3 with __NV_NOSAT: it has no infinity, CUDA returns NaN (sign kept)
};

// Binary interchange format with ExpBits exponent bits, ManBits stored mantissa bits and the
// standard bias 2^(ExpBits-1) - 1 (127 for bf16, 15 for fp16 and e5m2, 7 for e4m3).
template <int ExpBits, int ManBits, special_encoding Special>
struct fp_format {
  static constexpr int exp_bits = ExpBits;
  static constexpr int man_bits = ManBits;
  static constexpr special_encoding special = Special;
  static constexpr int bias = (1 << (ExpBits - 1)) - 1;
  // Exponent of the smallest normal number. Subnormals share it: their spacing stays at
  // 2^(emin - man_bits) all the way down to zero.
  static constexpr int emin = 1 - bias;
  static constexpr std::uint32_t sign_bit = 1u << (ExpBits + ManBits);
  static constexpr std::uint32_t man_mask = (1u << ManBits) - 1u;
  static constexpr std::uint32_t exp_all_ones = (1u << ExpBits) - 1u;
  static constexpr std::uint32_t inf_bits = exp_all_ones << ManBits;  // ieee formats only
  static constexpr std::uint32_t all_ones = inf_bits | man_mask;      // a NaN in every format
  // What every NaN input converts to. CUDA's float routines agree on "all ones, sign clear":
  // __float2bfloat16 and __float2half return 0x7FFF, and __nv_cvt_float_to_fp8 first replaces
  // any NaN by 0x7FFFFFFF, which then becomes 0x7F in both fp8 formats.
  static constexpr std::uint32_t canonical_nan = all_ones & ~sign_bit;
  static constexpr std::uint32_t max_finite_bits =
      Special == special_encoding::ieee ? inf_bits - 1u : all_ones - 1u;
};

using bf16_format = fp_format<8, 7, special_encoding::ieee>;
using fp16_format = fp_format<5, 10, special_encoding::ieee>;
using e4m3_format = fp_format<4, 3, special_encoding::finite_nan>;
using e5m2_format = fp_format<5, 2, special_encoding::ieee>;

// std::bit_cast without the std:: wrapper: std::bit_cast is a host-only constexpr function to
// nvcc (calling it from device code needs --expt-relaxed-constexpr), while the builtin it is
// implemented with (GCC >= 11, Clang, MSVC, and nvcc's front end) works on both sides.
template <class To, class From>
KILN_HD constexpr To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From));
  return __builtin_bit_cast(To, from);
}

// 2^k as a double, built from its bit pattern so it is usable in constant expressions.
// Only called with -1022 <= k <= 1023.
KILN_HD constexpr double pow2(int k) noexcept {
  return detail::bit_cast<double>(static_cast<std::uint64_t>(k + 1023) << 52);
}

// Rounds the double x to format F (round to nearest, ties to even) and returns the encoding.
//
// Math: write |x| = sig * 2^(e - 52), sig a 53-bit integer. Near |x| the representable values
// of F are the integer multiples of the quantum 2^(max(e, emin) - man_bits): normals carry
// man_bits fraction bits below their leading bit, and below 2^emin the spacing is frozen at
// the subnormal step. So the correctly rounded result is n quanta, where n = |x| / quantum
// rounded to the nearest integer (ties to the even one). The division is a right shift of sig
// by s = 52 - man_bits + max(0, emin - e), and the shifted-out bits decide the rounding.
//
// The encoding of n quanta needs no case split: for e >= emin, n lies in [2^m, 2^(m+1)] and
//   bits = ((e - emin + 1) << m) + (n - 2^m) = ((e - emin) << m) + n,
// where n == 2^(m+1) (the round-up carried out of the mantissa) correctly bumps the exponent
// field. For e < emin the same formula gives bits = n: a subnormal, or, when n rounds up to
// 2^m, exactly the smallest normal. Because encodings of non-negative values are ordered like
// the values themselves, "the rounded value is too large" is simply "bits > max_finite_bits".
// That is the same as comparing x against the midpoint above the largest finite value, with
// ties at that midpoint going to even, e.g.:
//   e4m3: max 448 = 1.110b*2^8; the next slot 480 = 1.111b*2^8 is the NaN pattern. 464 is the
//         tie and 448 has the even mantissa, so 464 -> 448 and only x > 464 overflows.
//   e5m2: max 57344 = 1.11b*2^15; the next slot is 2^16 (the inf pattern). 61440 is the tie,
//         57344's mantissa is odd, so 61440 rounds up and overflows (x >= 61440 overflows).
//   bf16/fp16: the largest finite has an all-ones (odd) mantissa, so the midpoint above it
//         already rounds to infinity, as IEEE requires (fp16: x >= 65520 -> inf).
// These are exactly CUDA's thresholds (464 inclusive for e4m3, 61440 exclusive for e5m2).
//
// Double subnormals (and zero) fit the same formula with e = -1022 and no implicit bit; they
// are far below every target's range and round to a signed zero. Infinity behaves like the
// finite value 2^1024 and so takes the overflow path with no special case.
template <class F>
KILN_HD constexpr std::uint32_t round_from_double(double x, overflow_policy on_overflow) noexcept {
  const std::uint64_t xb = detail::bit_cast<std::uint64_t>(x);
  const std::uint32_t sign = (xb >> 63) != 0 ? F::sign_bit : 0u;
  const int biased_exp = static_cast<int>((xb >> 52) & 0x7FFu);
  const std::uint64_t frac = xb & ((std::uint64_t{1} << 52) - 1u);

  // Any NaN -> the canonical all-ones pattern with the sign clear (0x7FFF, 0x7F).
  if (biased_exp == 0x7FF && frac != 0) return F::canonical_nan;

  const int e = biased_exp == 0 ? -1022 : biased_exp - 1023;
  const std::uint64_t sig = biased_exp == 0 ? frac : (frac | (std::uint64_t{1} << 52));

  int shift = 52 - F::man_bits + (e < F::emin ? F::emin - e : 0);
  // sig < 2^53 < 2^62, so with shift >= 63 the quotient is below one half and rounds to 0;
  // clamping keeps the shifts below defined without changing that outcome.
  if (shift > 63) shift = 63;
  std::uint64_t n = sig >> shift;
  const std::uint64_t rest = sig & ((std::uint64_t{1} << shift) - 1u);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (n & 1u) != 0)) ++n;

  const std::uint64_t scale = static_cast<std::uint64_t>(e < F::emin ? 0 : e - F::emin);
  const std::uint64_t bits = (scale << F::man_bits) + n;
  if (bits > F::max_finite_bits) {
    switch (on_overflow) {
      case overflow_policy::to_inf: return sign | F::inf_bits;
      case overflow_policy::saturate: return sign | F::max_finite_bits;
      case overflow_policy::to_nan: return sign | F::all_ones;
    }
  }
  return sign | static_cast<std::uint32_t>(bits);
}

template <class F>
KILN_HD constexpr bool is_nan_bits(std::uint32_t bits) noexcept {
  const std::uint32_t mag = bits & ~F::sign_bit;
  if constexpr (F::special == special_encoding::ieee) {
    return mag > F::inf_bits;
  } else {
    return mag == F::all_ones;
  }
}

// Exact value of a non-NaN encoding. A finite encoding with exponent field E and mantissa
// field M is M * 2^(1 - bias - m) when E == 0 and (2^m + M) * 2^(E - bias - m) otherwise, i.e.
// an integer of at most m + 1 bits times a power of two. That product is exact in double
// (and, for every format here, also in float, even bf16's subnormals: 2^-133 > 2^-149).
template <class F>
KILN_HD constexpr double decode_finite_or_inf(std::uint32_t bits) noexcept {
  const bool negative = (bits & F::sign_bit) != 0;
  const std::uint32_t exp_field = (bits >> F::man_bits) & F::exp_all_ones;
  const std::uint32_t man_field = bits & F::man_mask;
  double magnitude;
  if (F::special == special_encoding::ieee && exp_field == F::exp_all_ones) {
    magnitude = detail::bit_cast<double>(std::uint64_t{0x7FF0000000000000});  // +inf
  } else if (exp_field == 0) {
    magnitude = static_cast<double>(man_field) * pow2(F::emin - F::man_bits);
  } else {
    magnitude = static_cast<double>(man_field | (1u << F::man_bits)) *
                pow2(static_cast<int>(exp_field) - F::bias - F::man_bits);
  }
  return negative ? -magnitude : magnitude;  // -0.0 for the negative zero pattern
}

// Generic widening decode: bits of format F -> To (float or double).
//
// NaN is converted the way IEEE 754 converts between formats: the result is a quiet NaN with
// the input's sign, and the input's mantissa (payload) bits are kept as the leading mantissa
// bits of the result. So bf16 quiet NaNs decode to exactly bits << 16.
template <class F, class To>
KILN_HD constexpr To decode(std::uint32_t bits) noexcept {
  static_assert(std::is_same_v<To, float> || std::is_same_v<To, double>);
  if (is_nan_bits<F>(bits)) {
    using U = std::conditional_t<std::is_same_v<To, float>, std::uint32_t, std::uint64_t>;
    constexpr int to_man_bits = std::numeric_limits<To>::digits - 1;  // 23 or 52
    constexpr int to_exp_bits = static_cast<int>(sizeof(To)) * 8 - 1 - to_man_bits;
    const U to_sign = (bits & F::sign_bit) != 0 ? U{1} << (to_exp_bits + to_man_bits) : U{0};
    const U to_exp = ((U{1} << to_exp_bits) - 1u) << to_man_bits;
    const U quiet = U{1} << (to_man_bits - 1);
    const U payload = static_cast<U>(bits & F::man_mask) << (to_man_bits - F::man_bits);
    return detail::bit_cast<To>(static_cast<U>(to_sign | to_exp | quiet | payload));
  }
  // Narrowing double -> float is exact here (see decode_finite_or_inf); infinities stay inf.
  return static_cast<To>(decode_finite_or_inf<F>(bits));
}

// Equality as floating-point values: NaN equals nothing, +0 equals -0. Every other pair of
// values is equal exactly when the encodings are, so no decoding is needed.
template <class F>
KILN_HD constexpr bool equal_values(std::uint32_t a, std::uint32_t b) noexcept {
  if (is_nan_bits<F>(a) || is_nan_bits<F>(b)) return false;
  if (((a | b) & ~F::sign_bit) == 0) return true;  // both are zeros
  return a == b;
}

}  // namespace detail

// bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the top half of a float).
struct bf16 {
  using format = detail::bf16_format;
  std::uint16_t bits;

  bf16() = default;
  KILN_HD static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 r{};
    r.bits = b;
    return r;
  }
  KILN_HD constexpr explicit bf16(float f) noexcept : bf16(static_cast<double>(f)) {}
  KILN_HD constexpr explicit bf16(double d) noexcept
      : bits(static_cast<std::uint16_t>(detail::round_from_double<format>(
            d, detail::overflow_policy::to_inf))) {}
  KILN_HD constexpr explicit operator float() const noexcept {
    return detail::decode<format, float>(bits);
  }
  KILN_HD constexpr explicit operator double() const noexcept {
    return detail::decode<format, double>(bits);
  }
  KILN_HD static constexpr float max_finite() noexcept {
    return detail::decode<format, float>(format::max_finite_bits);  // 3.38953139e38
  }
  KILN_HD friend constexpr bool operator==(bf16 a, bf16 b) noexcept {
    return detail::equal_values<format>(a.bits, b.bits);
  }
  KILN_HD friend constexpr bool operator!=(bf16 a, bf16 b) noexcept { return !(a == b); }
};

// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits.
struct fp16 {
  using format = detail::fp16_format;
  std::uint16_t bits;

  fp16() = default;
  KILN_HD static constexpr fp16 from_bits(std::uint16_t b) noexcept {
    fp16 r{};
    r.bits = b;
    return r;
  }
  KILN_HD constexpr explicit fp16(float f) noexcept : fp16(static_cast<double>(f)) {}
  KILN_HD constexpr explicit fp16(double d) noexcept
      : bits(static_cast<std::uint16_t>(detail::round_from_double<format>(
            d, detail::overflow_policy::to_inf))) {}
  KILN_HD constexpr explicit operator float() const noexcept {
    return detail::decode<format, float>(bits);
  }
  KILN_HD constexpr explicit operator double() const noexcept {
    return detail::decode<format, double>(bits);
  }
  KILN_HD static constexpr float max_finite() noexcept {
    return detail::decode<format, float>(format::max_finite_bits);  // 65504
  }
  KILN_HD friend constexpr bool operator==(fp16 a, fp16 b) noexcept {
    return detail::equal_values<format>(a.bits, b.bits);
  }
  KILN_HD friend constexpr bool operator!=(fp16 a, fp16 b) noexcept { return !(a == b); }
};

// OCP FP8 E4M3 ("E4M3FN"): 1 sign, 4 exponent, 3 mantissa bits, bias 7, no infinities,
// NaN = S.1111.111, max finite 448. Construction saturates like CUDA's __NV_SATFINITE.
struct fp8_e4m3 {
  using format = detail::e4m3_format;
  std::uint8_t bits;

  fp8_e4m3() = default;
  KILN_HD static constexpr fp8_e4m3 from_bits(std::uint8_t b) noexcept {
    fp8_e4m3 r{};
    r.bits = b;
    return r;
  }
  KILN_HD constexpr explicit fp8_e4m3(float f) noexcept : fp8_e4m3(static_cast<double>(f)) {}
  KILN_HD constexpr explicit fp8_e4m3(double d) noexcept
      : bits(static_cast<std::uint8_t>(detail::round_from_double<format>(
            d, detail::overflow_policy::saturate))) {}
  KILN_HD constexpr explicit operator float() const noexcept {
    return detail::decode<format, float>(bits);
  }
  KILN_HD constexpr explicit operator double() const noexcept {
    return detail::decode<format, double>(bits);
  }
  KILN_HD static constexpr float max_finite() noexcept {
    return detail::decode<format, float>(format::max_finite_bits);  // 448
  }
  KILN_HD friend constexpr bool operator==(fp8_e4m3 a, fp8_e4m3 b) noexcept {
    return detail::equal_values<format>(a.bits, b.bits);
  }
  KILN_HD friend constexpr bool operator!=(fp8_e4m3 a, fp8_e4m3 b) noexcept { return !(a == b); }
};

// OCP FP8 E5M2: 1 sign, 5 exponent, 2 mantissa bits, bias 15, IEEE-style inf and NaN,
// max finite 57344. Construction saturates like CUDA's __NV_SATFINITE.
struct fp8_e5m2 {
  using format = detail::e5m2_format;
  std::uint8_t bits;

  fp8_e5m2() = default;
  KILN_HD static constexpr fp8_e5m2 from_bits(std::uint8_t b) noexcept {
    fp8_e5m2 r{};
    r.bits = b;
    return r;
  }
  KILN_HD constexpr explicit fp8_e5m2(float f) noexcept : fp8_e5m2(static_cast<double>(f)) {}
  KILN_HD constexpr explicit fp8_e5m2(double d) noexcept
      : bits(static_cast<std::uint8_t>(detail::round_from_double<format>(
            d, detail::overflow_policy::saturate))) {}
  KILN_HD constexpr explicit operator float() const noexcept {
    return detail::decode<format, float>(bits);
  }
  KILN_HD constexpr explicit operator double() const noexcept {
    return detail::decode<format, double>(bits);
  }
  KILN_HD static constexpr float max_finite() noexcept {
    return detail::decode<format, float>(format::max_finite_bits);  // 57344
  }
  KILN_HD friend constexpr bool operator==(fp8_e5m2 a, fp8_e5m2 b) noexcept {
    return detail::equal_values<format>(a.bits, b.bits);
  }
  KILN_HD friend constexpr bool operator!=(fp8_e5m2 a, fp8_e5m2 b) noexcept { return !(a == b); }
};

// Explicit saturation choice, matching __nv_cvt_double_to_fp8(x, sat, interp):
//   saturate = true  (__NV_SATFINITE): same as the constructor; overflow and +-inf -> +-448.
//   saturate = false (__NV_NOSAT): overflow and +-inf -> NaN with the input's sign (0x7F/0xFF),
//                                  since e4m3 has no infinity.
// In both modes 464 (the tie above 448) rounds to 448; only |x| > 464 overflows.
KILN_HD constexpr fp8_e4m3 to_fp8_e4m3(double x, bool saturate) noexcept {
  return fp8_e4m3::from_bits(static_cast<std::uint8_t>(detail::round_from_double<fp8_e4m3::format>(
      x, saturate ? detail::overflow_policy::saturate : detail::overflow_policy::to_nan)));
}

// Explicit saturation choice for e5m2:
//   saturate = true  (__NV_SATFINITE): overflow and +-inf -> +-57344 (0x7B/0xFB).
//   saturate = false (__NV_NOSAT): overflow and +-inf -> +-inf (0x7C/0xFC).
// Overflow means |x| >= 61440 (the tie above 57344 rounds away from the odd mantissa).
KILN_HD constexpr fp8_e5m2 to_fp8_e5m2(double x, bool saturate) noexcept {
  return fp8_e5m2::from_bits(static_cast<std::uint8_t>(detail::round_from_double<fp8_e5m2::format>(
      x, saturate ? detail::overflow_policy::saturate : detail::overflow_policy::to_inf)));
}

static_assert(std::is_trivially_copyable_v<bf16> && sizeof(bf16) == 2);
static_assert(std::is_trivially_copyable_v<fp16> && sizeof(fp16) == 2);
static_assert(std::is_trivially_copyable_v<fp8_e4m3> && sizeof(fp8_e4m3) == 1);
static_assert(std::is_trivially_copyable_v<fp8_e5m2> && sizeof(fp8_e5m2) == 1);

}  // namespace kiln
