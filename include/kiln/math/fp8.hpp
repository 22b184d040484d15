// The FP8 (e4m3) scaling recipe of DeepSeek-V3, as scalar rules that the CPU references
// (backend/cpu/fp8_gemm.hpp) and the CUDA kernels (kernels/fp8_gemm/) both evaluate, so that CPU
// and CUDA quantization agree bit for bit; the front-end is ops/fp8_gemm.hpp.
//
// A tile (1×128 elements, or a 128×128 block) gets one FP32 scale
//   scale = max(amax(tile), amax_floor) / 448          (448 = largest finite e4m3)
// optionally rounded up to a power of two, and each element becomes
//   q = e4m3(x / scale)    round to nearest even, saturating at ±448,
// so that x ≈ float(q) · scale. The division (not a multiply by the reciprocal) is IEEE-rounded
// on both backends, which makes the quantized bytes identical everywhere.
//
// Host and device (KILN_HD); g++ compiles it.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD, detail::bit_cast

namespace kiln::fp8 {

// Edge of a tile and length of a k-block.
inline constexpr std::int64_t tile_size = 128;
// Largest finite e4m3 value.
inline constexpr float e4m3_max = 448.0f;

// How a matrix is cut into scaled tiles: one scale per 1×128 tile (activations, gradients: one
// row, 128 consecutive columns) or per 128×128 block (weights).
enum class Tiling { row_1x128, block_128x128 };

inline const char* tiling_name(Tiling t) { return t == Tiling::row_1x128 ? "1x128" : "128x128"; }

// Where the scale of (row, k-block kb) is stored, in floats from the start of the scale array with
// leading dimension ld. tile_rows 1 (1×128 tiles): k-block major, [kb * ld + row], ld ≥ rows;
// tile_rows 128 (128×128 blocks): row-major [ceil(rows/128), ceil(cols/128)], [(row/128) * ld + kb].
KILN_HD inline std::int64_t scale_index(int tile_rows, std::int64_t ld, std::int64_t row, std::int64_t kb) {
  return tile_rows == 1 ? kb * ld + row : (row / 128) * ld + kb;
}

// Running max of |v| that skips NaN (a NaN compares false), the rule of the CUDA kernels too.
// Max is exact, so any order of the reduction gives the same amax.
KILN_HD inline float amax_step(float running, float v) {
  const float a = ::kiln::detail::bit_cast<float>(::kiln::detail::bit_cast<std::uint32_t>(v) & 0x7FFFFFFFu);
  return a > running ? a : running;
}

// IEEE-rounded x / y, also when a CUDA build uses fast-math division (--use_fast_math).
KILN_HD inline float divide_rn(float x, float y) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(x, y);
#else
  return x / y;
#endif
}

// The scale of a tile whose largest magnitude is `amax`. amax_floor (> 0) keeps all-zero or tiny
// tiles from getting a zero or denormal scale. The power-of-two variant rounds up (a larger scale
// keeps |x / scale| ≤ 448): a float that is not a power of two has non-zero mantissa bits, and
// the next power of two is its exponent field plus one with the mantissa cleared. amax = inf
// gives scale inf (and the tile quantizes to zeros and NaNs), identically on both backends.
KILN_HD inline float tile_scale(float amax, float amax_floor, bool power_of_two) {
  const float scale = divide_rn(amax > amax_floor ? amax : amax_floor, e4m3_max);
  if (!power_of_two) return scale;
  const std::uint32_t bits = ::kiln::detail::bit_cast<std::uint32_t>(scale);
  const std::uint32_t exponent = bits & 0x7F800000u, mantissa = bits & 0x007FFFFFu;
  if (exponent == 0x7F800000u || mantissa == 0) return scale;  // inf, or already 2^e
  return ::kiln::detail::bit_cast<float>(exponent + 0x00800000u);
}

// divide_rn(x, scale) for every x of one tile, without a division per element: the CUDA
// quantization kernels use it (a division, or the double-precision route they took before, costs
// more issue slots than the element's 3 bytes of memory traffic allow at full bandwidth).
// Per tile: inv = RN(1/scale). Per element, in FP32 with fused multiply-adds:
//   q0 = RN(x · inv)                        within 1.5 ulp of x / scale
//   q1 = RN(q0 + RN(x − scale·q0) · inv)    faithful (within 1 ulp)
//   q2 = RN(q1 + (x − scale·q1) · inv)      = RN(x / scale)
// The last line is Markstein's theorem (Handbook of Floating-Point Arithmetic, 2nd ed., §4.7):
// with y = RN(1/b) and q within 1 ulp of a/b, the residual a − b·q is exactly a float (the fma
// computes it exactly) and RN(q + r·y) = RN(a/b). It needs the residual to be a normal float: a
// tile whose scale is below 2^-60 (amax < 2^-51) is first scaled by 2^64 (x and scale alike, which
// is exact), so every element whose quotient is at least 2^-12 has a normal residual; smaller
// quotients round to ±0 in e4m3 (its least magnitude is 2^-9) whatever their last bits, and the
// sign is x's (scale > 0). scale = +inf (an infinite element) gives x · 0, as x / inf would.
// tests/ops/test_fp8_divider.cpp checks it against divide_rn on every float of a binade.
struct ScaleDivider {
  float scale, inv, pre;  // pre: 2^64 for tiny scales, else 1 (scale holds the scaled value)
  bool infinite;

  KILN_HD explicit ScaleDivider(float s) : scale(s), inv(0.0f), pre(1.0f), infinite(s == INFINITY) {
    if (infinite) return;
    if (scale < 0x1p-60f) {
      pre = 0x1p64f;
      scale *= pre;
    }
#ifdef __CUDA_ARCH__
    inv = __frcp_rn(scale);
#else
    inv = 1.0f / scale;
#endif
  }

  KILN_HD float operator()(float x_in) const {
    if (infinite) return mul(x_in, 0.0f);
    const float x = mul(x_in, pre);
    float q = mul(x, inv);
    q = fma_rn(fma_rn(-scale, q, x), inv, q);
    q = fma_rn(fma_rn(-scale, q, x), inv, q);
    return std::copysign(q, x);
  }

 private:
  KILN_HD static float mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
  }
  KILN_HD static float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return __fmaf_rn(a, b, c);
#else
    return std::fma(a, b, c);
#endif
  }
};

}  // namespace kiln::fp8
