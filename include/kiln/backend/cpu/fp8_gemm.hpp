// FP8 (e4m3) quantization with fine-grained scales and the FP8 GEMM on the CPU: the references
// of kernels/fp8_gemm/ (the op front-ends are in ops/fp8_gemm.hpp). The scalar recipe that both
// backends evaluate (tile_scale, amax_step, divide_rn, the scale layouts) is math/fp8.hpp, so that
// CPU and CUDA quantization agree bit for bit.
//
// The recipe (DeepSeek-V3): a tile (1×128 or 128×128 elements) gets one FP32 scale
//   scale = max(amax(tile), amax_floor) / 448          (448 = largest finite e4m3)
// optionally rounded up to a power of two, and each element becomes
//   q = e4m3(x / scale)    round to nearest even, saturating at ±448,
// so that x ≈ float(q) · scale. The division (not a multiply by the reciprocal) is IEEE-rounded
// on both backends, which makes the quantized bytes identical everywhere.
//
// The GEMM computes, per output element, per k-block of 128 (the last may be partial),
//   D[m, n] = Σ_kb a_scale(m, kb) · b_scale(n, kb) · Σ_{k in kb} A[m, k] · B[n, k],
// with the inner sum in FP32 and the scaled partial sums accumulated in FP32 (the "promotion" of
// DeepSeek-V3); gemm_reference evaluates the same function in float64.
#pragma once

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstdint>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/low_precision.hpp"
#include "kiln/math/fp8.hpp"

namespace kiln::cpu {

// float -> e4m3 bits, the same function as kiln::fp8_e4m3(float) (round to nearest even,
// saturating to ±448, NaN -> 0x7F), in 32-bit integer arithmetic: several times faster than the
// generic conversion through double. Same math (low_precision.hpp): with |v| = sig · 2^(u − 23)
// (u the unbiased exponent, sig with the implicit bit), the result is n quanta of
// 2^(max(u, −6) − 3), n = sig >> shift rounded to nearest even, encoded as
// (max(u, −6) + 6) · 8 + n (a carry out of the mantissa bumps the exponent field correctly).
inline std::uint8_t e4m3_bits(float v) {
  const std::uint32_t b = ::kiln::detail::bit_cast<std::uint32_t>(v);
  const std::uint32_t sign = (b >> 24) & 0x80u, a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;                                    // NaN
  if (a >= 0x43E80000u) return static_cast<std::uint8_t>(sign | 0x7Eu);  // |v| ≥ 464 (the tie above 448), inf
  const int biased = static_cast<int>(a >> 23);
  const int u = (biased == 0 ? 1 : biased) - 127;                      // float subnormals: exponent -126
  const std::uint32_t sig = biased == 0 ? a : (a & 0x7FFFFFu) | 0x800000u;
  const int shift = 20 + (u < -6 ? -6 - u : 0);
  if (shift > 24) return static_cast<std::uint8_t>(sign);  // |v| < 2^-10 (half the smallest subnormal): ±0
  std::uint32_t n = sig >> shift;
  const std::uint32_t rest = sig & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (n & 1u) != 0)) ++n;
  return static_cast<std::uint8_t>(sign | ((static_cast<std::uint32_t>(u < -6 ? 0 : u + 6) << 3) + n));
}

// e4m3 byte -> float (exact), as a table of all 256 encodings.
inline const std::array<float, 256>& e4m3_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[static_cast<std::size_t>(b)] = static_cast<float>(fp8_e4m3::from_bits(static_cast<std::uint8_t>(b)));
    return t;
  }();
  return table;
}

// Copies L[i0:i1, j0:j1] (element (i, j) at x[i * s0 + j * s1]) into buf, row-major with row
// length j1 - j0, as floats. The inner loop runs along whichever index has the smaller stride, so
// a transposed view is read a cache line at a time instead of one line per element.
template <class T>
void gather_tile(const T* x, std::int64_t s0, std::int64_t s1, std::int64_t i0, std::int64_t i1, std::int64_t j0,
                 std::int64_t j1, float* buf) {
  const std::int64_t width = j1 - j0;
  if (std::abs(s1) <= std::abs(s0)) {
    for (std::int64_t i = i0; i < i1; ++i)
      for (std::int64_t j = j0; j < j1; ++j) buf[(i - i0) * width + (j - j0)] = static_cast<float>(x[i * s0 + j * s1]);
  } else {
    for (std::int64_t j = j0; j < j1; ++j)
      for (std::int64_t i = i0; i < i1; ++i) buf[(i - i0) * width + (j - j0)] = static_cast<float>(x[i * s0 + j * s1]);
  }
}

// Quantizes the logical matrix L [rows, cols], element (i, j) at x[i * s0 + j * s1], with one
// scale per 1×128 tile: q [rows, cols] row-major; scale(i, kb) at scale[kb * scale_ld + i].
// (The transposed tilings are the same call with the strides swapped.) Work: groups of 16 rows,
// one k-block at a time, gathered into a 16×128 buffer.
template <class T>
void fp8_quantize_rows(const T* x, std::int64_t rows, std::int64_t cols, std::int64_t s0, std::int64_t s1,
                       float amax_floor, bool power_of_two, std::uint8_t* q, float* scale, std::int64_t scale_ld) {
  constexpr std::int64_t group = 16;
  const std::int64_t kblocks = (cols + fp8::tile_size - 1) / fp8::tile_size;
  // (Captures by value: stores through q, a byte pointer, could alias anything captured by reference.)
  parallel_for((rows + group - 1) / group, group * cols, [=](std::int64_t begin, std::int64_t end) {
    std::vector<float> buf(static_cast<std::size_t>(group * fp8::tile_size));
    for (std::int64_t g = begin; g < end; ++g) {
      const std::int64_t i0 = g * group, i1 = std::min(rows, i0 + group);
      for (std::int64_t kb = 0; kb < kblocks; ++kb) {
        const std::int64_t c0 = kb * fp8::tile_size, c1 = std::min(cols, c0 + fp8::tile_size), width = c1 - c0;
        gather_tile(x, s0, s1, i0, i1, c0, c1, buf.data());
        for (std::int64_t i = i0; i < i1; ++i) {
          const float* v = buf.data() + (i - i0) * width;
          float amax = 0.0f;
          for (std::int64_t j = 0; j < width; ++j) amax = fp8::amax_step(amax, v[j]);
          const float s = fp8::tile_scale(amax, amax_floor, power_of_two);
          scale[kb * scale_ld + i] = s;
          for (std::int64_t j = 0; j < width; ++j) q[i * cols + c0 + j] = e4m3_bits(fp8::divide_rn(v[j], s));
        }
      }
    }
  });
}

// Same with one scale per 128×128 block: scale(ib, kb) at scale[ib * scale_ld + kb]. Each block
// is gathered into a 128×128 buffer.
template <class T>
void fp8_quantize_blocks(const T* x, std::int64_t rows, std::int64_t cols, std::int64_t s0, std::int64_t s1,
                         float amax_floor, bool power_of_two, std::uint8_t* q, float* scale, std::int64_t scale_ld) {
  const std::int64_t row_blocks = (rows + fp8::tile_size - 1) / fp8::tile_size;
  const std::int64_t kblocks = (cols + fp8::tile_size - 1) / fp8::tile_size;
  parallel_for(row_blocks * kblocks, fp8::tile_size * fp8::tile_size, [=](std::int64_t begin, std::int64_t end) {
    std::vector<float> buf(static_cast<std::size_t>(fp8::tile_size * fp8::tile_size));
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t ib = t / kblocks, kb = t % kblocks;
      const std::int64_t i0 = ib * fp8::tile_size, i1 = std::min(rows, i0 + fp8::tile_size);
      const std::int64_t c0 = kb * fp8::tile_size, c1 = std::min(cols, c0 + fp8::tile_size), width = c1 - c0;
      gather_tile(x, s0, s1, i0, i1, c0, c1, buf.data());
      const std::int64_t n = (i1 - i0) * width;
      float amax = 0.0f;
      for (std::int64_t e = 0; e < n; ++e) amax = fp8::amax_step(amax, buf[static_cast<std::size_t>(e)]);
      const float s = fp8::tile_scale(amax, amax_floor, power_of_two);
      scale[ib * scale_ld + kb] = s;
      for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t j = 0; j < width; ++j)
          q[i * cols + c0 + j] = e4m3_bits(fp8::divide_rn(buf[static_cast<std::size_t>((i - i0) * width + j)], s));
    }
  });
}

// One operand of the GEMM as the kernels see it: e4m3 rows of K bytes (row stride ld) and scales.
struct Fp8Operand {
  const std::uint8_t* data = nullptr;
  std::int64_t ld = 0;
  const float* scale = nullptr;
  std::int64_t scale_ld = 0;
  int tile_rows = 1;  // 1: 1×128 tiles, k-block major; 128: 128×128 blocks, row-major

  float scale_of(std::int64_t row, std::int64_t kb) const {
    return scale[fp8::scale_index(tile_rows, scale_ld, row, kb)];
  }
};

// FP32 dot product of two decoded runs of at most one k-block. Eight independent partial sums
// (combined in a fixed order) let the compiler vectorise without reordering anything itself, so
// the result does not depend on the thread count or the compiler's choices.
inline float fp8_block_dot(const float* a, const float* b, std::int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) lanes[j] += a[k + j] * b[k + j];
  for (int j = 0; k < n; ++k, ++j) lanes[j] += a[k] * b[k];
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// D [m, n] (row stride ldd) = A [m, k] · B [n, k]ᵀ with the per-k-block promotion in FP32.
// Work is cut into tiles of 64 rows of A × 64 rows of B; a task decodes its B rows to float once
// and reuses them for each of its rows of A.
template <class Out>
void fp8_gemm(const Fp8Operand& a, const Fp8Operand& b, std::int64_t m, std::int64_t n, std::int64_t k, Out* d,
              std::int64_t ldd) {
  constexpr std::int64_t tile = 64;
  const auto& value = e4m3_values();
  const std::int64_t kblocks = (k + fp8::tile_size - 1) / fp8::tile_size;
  const std::int64_t m_tiles = (m + tile - 1) / tile, n_tiles = (n + tile - 1) / tile;
  parallel_for(m_tiles * n_tiles, tile * tile * k, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> bf(static_cast<std::size_t>(tile * k)), af(static_cast<std::size_t>(k));
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t i0 = (t / n_tiles) * tile, i1 = std::min(m, i0 + tile);
      const std::int64_t j0 = (t % n_tiles) * tile, j1 = std::min(n, j0 + tile);
      for (std::int64_t j = j0; j < j1; ++j)
        for (std::int64_t kk = 0; kk < k; ++kk)
          bf[static_cast<std::size_t>((j - j0) * k + kk)] = value[b.data[j * b.ld + kk]];
      for (std::int64_t i = i0; i < i1; ++i) {
        for (std::int64_t kk = 0; kk < k; ++kk) af[static_cast<std::size_t>(kk)] = value[a.data[i * a.ld + kk]];
        for (std::int64_t j = j0; j < j1; ++j) {
          const float* br = bf.data() + (j - j0) * k;
          float acc = 0.0f;
          for (std::int64_t kb = 0; kb < kblocks; ++kb) {
            const std::int64_t k0 = kb * fp8::tile_size, len = std::min(k, k0 + fp8::tile_size) - k0;
            const float partial = fp8_block_dot(af.data() + k0, br + k0, len);
            acc += partial * (a.scale_of(i, kb) * b.scale_of(j, kb));
          }
          d[i * ldd + j] = static_cast<Out>(acc);
        }
      }
    }
  });
}

// The float64 value of the same product for the rows `rows` of A: out [rows.size(), n].
// Products of two e4m3 values have at most 8 significant bits and lie in [2^-18, 2^17.6], so a
// k-block's sum of 128 of them spans < 43 bits and is exact in double, in any order; then each
// block sum is scaled by a_scale · b_scale (exact in double: 24 + 24 bits) and summed.
// Work: B is decoded one row at a time (parallel over B's rows), A's selected rows once.
inline void fp8_gemm_reference(const Fp8Operand& a, const Fp8Operand& b, const std::vector<std::int64_t>& rows,
                               std::int64_t n, std::int64_t k, double* out) {
  const auto& value = e4m3_values();
  const std::int64_t kblocks = (k + fp8::tile_size - 1) / fp8::tile_size;
  const auto r = static_cast<std::int64_t>(rows.size());
  std::vector<double> ad(static_cast<std::size_t>(r * k));
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t kk = 0; kk < k; ++kk)
      ad[static_cast<std::size_t>(i * k + kk)] = value[a.data[rows[static_cast<std::size_t>(i)] * a.ld + kk]];
  parallel_for(n, r * k, [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> bd(static_cast<std::size_t>(k));
    for (std::int64_t j = begin; j < end; ++j) {
      for (std::int64_t kk = 0; kk < k; ++kk) bd[static_cast<std::size_t>(kk)] = value[b.data[j * b.ld + kk]];
      for (std::int64_t i = 0; i < r; ++i) {
        const double* ar = ad.data() + i * k;
        const std::int64_t row = rows[static_cast<std::size_t>(i)];
        double total = 0.0;
        for (std::int64_t kb = 0; kb < kblocks; ++kb) {
          const std::int64_t k0 = kb * fp8::tile_size, k1 = std::min(k, k0 + fp8::tile_size);
          // Exact in any order (see above), so four independent partial sums lose nothing.
          double part[4] = {0.0, 0.0, 0.0, 0.0};
          std::int64_t kk = k0;
          for (; kk + 4 <= k1; kk += 4)
            for (int l = 0; l < 4; ++l) part[l] += ar[kk + l] * bd[static_cast<std::size_t>(kk + l)];
          for (; kk < k1; ++kk) part[0] += ar[kk] * bd[static_cast<std::size_t>(kk)];
          const double block = (part[0] + part[1]) + (part[2] + part[3]);
          total += block * (static_cast<double>(a.scale_of(row, kb)) * static_cast<double>(b.scale_of(j, kb)));
        }
        out[i * n + j] = total;
      }
    }
  });
}

}  // namespace kiln::cpu
