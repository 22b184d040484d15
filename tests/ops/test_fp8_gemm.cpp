// kiln::fp8 on the CPU: quantization (every tiling, transposed or not, float and bf16, odd sizes,
// non-contiguous inputs, the power-of-two option, the floor, special values) against a scalar
// reference written here from the recipe, bit for bit; the scale layouts; dequantize; the FP8 GEMM
// and its float64 reference against an independent double loop; errors.
#include <kiln/ops/fp8_gemm.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace kiln;
using kiln::testing::relative_error;
using fp8::QuantizedMatrix;
using fp8::Tiling;

namespace {

// ---- an independent e4m3 description: textbook decode, round to nearest even by search ----

double e4m3_decode(std::uint8_t b) {
  const int e = (b >> 3) & 0xF, m = b & 0x7;
  const double sign = (b & 0x80) ? -1.0 : 1.0;
  if (e == 0xF && m == 0x7) return std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(m, -9);  // subnormals: m/8 * 2^-6
  return sign * std::ldexp(1.0 + m / 8.0, e - 7);
}

// Round v to e4m3: nearest of the 127 finite magnitudes (codes 0..126 are increasing), ties to
// the even code (even mantissa), above 448 saturating; NaN -> 0x7F; the sign bit from v's sign.
std::uint8_t e4m3_round(double v) {
  if (std::isnan(v)) return 0x7F;
  const double a = std::fabs(v);
  const std::uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  int lo = 0;
  while (lo < 126 && e4m3_decode(static_cast<std::uint8_t>(lo + 1)) <= a) ++lo;
  int code = lo;
  if (lo < 126) {
    const double below = a - e4m3_decode(static_cast<std::uint8_t>(lo));
    const double above = e4m3_decode(static_cast<std::uint8_t>(lo + 1)) - a;
    if (above < below || (above == below && (lo & 1) != 0)) code = lo + 1;
  }
  return static_cast<std::uint8_t>(sign | code);
}

float ref_scale(float amax, float floor, bool power_of_two) {
  float s = std::max(amax, floor) / 448.0f;
  if (power_of_two && std::isfinite(s)) {
    int e = 0;
    const double m = std::frexp(static_cast<double>(s), &e);  // s = m 2^e, m in [0.5, 1)
    if (m != 0.5) s = static_cast<float>(std::ldexp(1.0, e));
  }
  return s;
}

struct RefQuant {
  std::vector<std::uint8_t> bytes;  // [rows, cols]
  std::vector<float> scales;        // logical, row-major: [rows, kblocks] or [row blocks, kblocks]
};

// The recipe on the logical matrix L (row-major values), tile by tile.
RefQuant ref_quantize(const std::vector<float>& L, std::int64_t rows, std::int64_t cols, Tiling tiling,
                      fp8::QuantizeOptions opt = {}) {
  const std::int64_t kb_count = (cols + 127) / 128;
  const std::int64_t tile_rows = tiling == Tiling::row_1x128 ? 1 : 128;
  const std::int64_t rb_count = (rows + tile_rows - 1) / tile_rows;
  RefQuant r;
  r.bytes.assign(static_cast<std::size_t>(rows * cols), 0);
  r.scales.assign(static_cast<std::size_t>(rb_count * kb_count), 0.0f);
  for (std::int64_t rb = 0; rb < rb_count; ++rb)
    for (std::int64_t kb = 0; kb < kb_count; ++kb) {
      const std::int64_t i0 = rb * tile_rows, i1 = std::min(rows, i0 + tile_rows);
      const std::int64_t j0 = kb * 128, j1 = std::min(cols, j0 + 128);
      float amax = 0.0f;
      for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t j = j0; j < j1; ++j) {
          const float a = std::fabs(L[static_cast<std::size_t>(i * cols + j)]);
          if (a > amax) amax = a;  // NaN never wins
        }
      const float s = ref_scale(amax, opt.amax_floor, opt.power_of_two_scale);
      r.scales[static_cast<std::size_t>(rb * kb_count + kb)] = s;
      for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t j = j0; j < j1; ++j) {
          const float x = L[static_cast<std::size_t>(i * cols + j)];
          r.bytes[static_cast<std::size_t>(i * cols + j)] = e4m3_round(static_cast<double>(x / s));
        }
    }
  return r;
}

std::vector<std::uint8_t> bytes_of(const Tensor<fp8_e4m3>& t) {
  std::vector<std::uint8_t> out;
  for (const fp8_e4m3& v : t.to_vector()) out.push_back(v.bits);
  return out;
}

std::uint32_t float_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

// The scale storage of a 1×128 matrix: [kblocks, ld], padding entries included.
std::vector<float> row_scale_storage(const QuantizedMatrix& q) {
  const std::int64_t kb = q.scale.size(1), ld = q.scale.stride(1);
  return Tensor<float>::view_of(q.scale.storage(), q.scale.offset(), {kb, ld}, {ld, 1}).to_vector();
}

// got (kiln) against want (the reference) exactly, plus the layout rules of the header.
void expect_quantization(const QuantizedMatrix& got, const RefQuant& want, std::int64_t rows, std::int64_t cols,
                         Tiling tiling, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(got.data.shape(), (Shape{rows, cols}));
  EXPECT_TRUE(got.data.is_contiguous());
  EXPECT_EQ(got.tiling, tiling);
  EXPECT_EQ(got.rows(), rows);
  EXPECT_EQ(got.cols(), cols);
  const std::int64_t kb = (cols + 127) / 128;
  if (tiling == Tiling::row_1x128) {
    const std::int64_t ld = (rows + 3) / 4 * 4;
    ASSERT_EQ(got.scale.shape(), (Shape{rows, kb}));
    EXPECT_EQ(got.scale.strides(), (Strides{1, ld}));
    const std::vector<float> storage = row_scale_storage(got);
    for (std::int64_t b = 0; b < kb; ++b)
      for (std::int64_t r = rows; r < ld; ++r)
        EXPECT_EQ(float_bits(storage[static_cast<std::size_t>(b * ld + r)]), 0u) << "padding at k-block " << b << " row " << r;
  } else {
    ASSERT_EQ(got.scale.shape(), (Shape{(rows + 127) / 128, kb}));
    EXPECT_TRUE(got.scale.is_contiguous());
  }
  const std::vector<float> scales = got.scale.to_vector();
  ASSERT_EQ(scales.size(), want.scales.size());
  std::size_t bad_scales = 0;
  for (std::size_t i = 0; i < scales.size(); ++i)
    if (float_bits(scales[i]) != float_bits(want.scales[i]) && bad_scales++ < 5)
      ADD_FAILURE() << "scale " << i << ": got " << scales[i] << ", want " << want.scales[i];
  EXPECT_EQ(bad_scales, 0u);
  const std::vector<std::uint8_t> bytes = bytes_of(got.data);
  ASSERT_EQ(bytes.size(), want.bytes.size());
  std::size_t bad_bytes = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] != want.bytes[i] && bad_bytes++ < 5)
      ADD_FAILURE() << "byte " << i << " (row " << i / static_cast<std::size_t>(cols) << ", col "
                    << i % static_cast<std::size_t>(cols) << "): got " << int(bytes[i]) << ", want " << int(want.bytes[i]);
  EXPECT_EQ(bad_bytes, 0u);
}

// Normal values whose magnitude varies by row and column block (so tiles get different scales),
// with a few outliers, a few exact zeros, and one all-zero region (the floor).
Tensor<float> test_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  Generator gen{seed, 0};
  std::vector<float> v = randn<float>({rows, cols}, 0.0, 1.0, Device::cpu(), gen).to_vector();
  const std::vector<float> u = rand<float>({rows, cols}, 0.0, 1.0, Device::cpu(), gen).to_vector();
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::size_t k = static_cast<std::size_t>(i * cols + j);
      v[k] *= std::ldexp(1.0f, static_cast<int>((i * 7 + (j / 128) * 3) % 19) - 9);
      if (u[k] < 0.002f) v[k] *= 300.0f;
      if (u[k] > 0.998f) v[k] = 0.0f;
      if (i == rows - 1 && j < 128 && rows > 2) v[k] = 0.0f;  // a zero tile row-run / corner
    }
  return Tensor<float>::from_vector(v, {rows, cols});
}

// L's values (x or xᵀ) as floats, row-major.
template <class T>
std::vector<float> logical_values(const Tensor<T>& x, bool transposed) {
  const std::vector<T> v = x.to_vector();
  const std::int64_t r = x.size(0), c = x.size(1);
  std::vector<float> out(v.size());
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j) {
      const float f = static_cast<float>(v[static_cast<std::size_t>(i * c + j)]);
      if (transposed) out[static_cast<std::size_t>(j * r + i)] = f;
      else out[static_cast<std::size_t>(i * c + j)] = f;
    }
  return out;
}

template <class T>
void check_all_tilings(const Tensor<T>& x, const std::string& what, fp8::QuantizeOptions opt = {}) {
  for (Tiling tiling : {Tiling::row_1x128, Tiling::block_128x128})
    for (bool transposed : {false, true}) {
      const std::int64_t rows = transposed ? x.size(1) : x.size(0), cols = transposed ? x.size(0) : x.size(1);
      const RefQuant want = ref_quantize(logical_values(x, transposed), rows, cols, tiling, opt);
      const QuantizedMatrix got = transposed ? fp8::quantize_transposed(x, tiling, opt) : fp8::quantize(x, tiling, opt);
      expect_quantization(got, want, rows, cols, tiling,
                          str(what, " ", dtype_of<T>, " ", x.shape(), " strides ", x.strides(), " tiling ",
                              fp8::tiling_name(tiling), transposed ? " transposed" : ""));
    }
}

const std::vector<Shape> odd_shapes = {{1, 1}, {1, 200}, {7, 33}, {3, 128}, {129, 130}, {257, 300}, {300, 1}, {128, 256}};

}  // namespace

TEST(Fp8Quantize, ReferenceDecoderIsTheFormat) {
  // The test's own e4m3 description agrees with kiln's type on every encoding and on rounding.
  for (int b = 0; b < 256; ++b) {
    const double want = e4m3_decode(static_cast<std::uint8_t>(b));
    const double got = static_cast<double>(fp8_e4m3::from_bits(static_cast<std::uint8_t>(b)));
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got)) << b;
    else EXPECT_EQ(got, want) << b;
  }
  EXPECT_EQ(e4m3_round(448.0), 0x7E);
  EXPECT_EQ(e4m3_round(464.0), 0x7E);  // the tie above 448 goes to the even 448
  EXPECT_EQ(e4m3_round(1e9), 0x7E);
  EXPECT_EQ(e4m3_round(-1e9), 0xFE);
  EXPECT_EQ(e4m3_round(8.5), e4m3_round(8.0));  // tie: 8 has the even mantissa
  EXPECT_EQ(e4m3_round(9.5), e4m3_round(10.0));
  EXPECT_EQ(e4m3_round(-0.0), 0x80);
  EXPECT_EQ(e4m3_round(std::ldexp(1.0, -10)), 0x00);  // half the smallest subnormal: tie to 0
}

TEST(Fp8Quantize, FastCpuConversionIsKilnsE4m3) {
  // The CPU quantizer converts with cpu::e4m3_bits (32-bit integer arithmetic); it must be
  // kiln::fp8_e4m3(float) exactly. Every exponent, both signs, the mantissas around each rounding
  // boundary of every e4m3 quantum (normal and subnormal), and pseudo-random mantissas.
  std::uint64_t state = 12345;
  std::size_t bad = 0;
  auto check_bits = [&](std::uint32_t b) {
    const float f = std::bit_cast<float>(b);
    if (cpu::e4m3_bits(f) != fp8_e4m3(f).bits && bad++ < 5)
      ADD_FAILURE() << "float bits " << std::hex << b << ": " << int(cpu::e4m3_bits(f)) << " vs " << int(fp8_e4m3(f).bits);
  };
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t e = 0; e < 256; ++e) {
      for (int shift = 17; shift <= 24; ++shift)  // boundaries of quanta 2^shift ulps wide
        for (std::uint32_t m = 0; m < (1u << 23); m += 1u << shift)
          for (std::uint32_t d : {0u, 1u, (1u << (shift - 1)) - 1u, 1u << (shift - 1), (1u << (shift - 1)) + 1u})
            if (m + d < (1u << 23)) check_bits(sign | (e << 23) | (m + d));
      for (int i = 0; i < 256; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        check_bits(sign | (e << 23) | static_cast<std::uint32_t>(state >> 41));
      }
    }
  EXPECT_EQ(bad, 0u);
}

TEST(Fp8Quantize, MatchesScalarReferenceFloat) {
  std::uint64_t seed = 1;
  for (const Shape& s : odd_shapes) check_all_tilings(test_matrix(s[0], s[1], seed++), "float");
}

TEST(Fp8Quantize, MatchesScalarReferenceBf16) {
  std::uint64_t seed = 100;
  for (const Shape& s : odd_shapes) check_all_tilings(cast<bf16>(test_matrix(s[0], s[1], seed++)), "bf16");
}

TEST(Fp8Quantize, NonContiguousInputs) {
  const Tensor<float> base = test_matrix(150, 260, 7);
  check_all_tilings(transpose(base, 0, 1), "transposed view");
  check_all_tilings(slice(base, 1, 1, 260, 2), "every other column");
  check_all_tilings(narrow(narrow(base, 0, 3, 140), 1, 5, 200), "narrowed");
  check_all_tilings(expand(narrow(base, 0, 4, 1), {9, 260}), "expanded row");
  check_all_tilings(transpose(cast<bf16>(base), 0, 1), "bf16 transposed view");
}

TEST(Fp8Quantize, TransposedIsQuantizeOfTranspose) {
  const Tensor<float> x = test_matrix(200, 333, 11);
  for (Tiling t : {Tiling::row_1x128, Tiling::block_128x128}) {
    const QuantizedMatrix a = fp8::quantize_transposed(x, t), b = fp8::quantize(transpose(x, 0, 1), t);
    const QuantizedMatrix c = fp8::quantize(contiguous(transpose(x, 0, 1)), t);
    EXPECT_EQ(bytes_of(a.data), bytes_of(b.data));
    EXPECT_EQ(bytes_of(a.data), bytes_of(c.data));
    EXPECT_EQ(a.scale.to_vector(), b.scale.to_vector());
    EXPECT_EQ(a.scale.to_vector(), c.scale.to_vector());
  }
  // 128×128 blocks of x and xᵀ are the same sets of elements: the scale grids are transposes.
  const QuantizedMatrix xb = fp8::quantize(x, Tiling::block_128x128);
  const QuantizedMatrix tb = fp8::quantize_transposed(x, Tiling::block_128x128);
  ASSERT_EQ(tb.scale.shape(), (Shape{xb.scale.size(1), xb.scale.size(0)}));
  for (std::int64_t i = 0; i < xb.scale.size(0); ++i)
    for (std::int64_t j = 0; j < xb.scale.size(1); ++j) EXPECT_EQ(xb.scale.at({i, j}), tb.scale.at({j, i}));
}

TEST(Fp8Quantize, WithTransposedIsBothQuantizations) {
  for (const Shape& s : std::vector<Shape>{{200, 333}, {1, 1}, {129, 7}})
    for (Tiling tiling : {Tiling::row_1x128, Tiling::block_128x128}) {
      const Tensor<bf16> x = cast<bf16>(test_matrix(s[0], s[1], 12));
      fp8::QuantizeOptions opt;
      opt.amax_floor = 1e-30f;
      const fp8::QuantizedPair both = fp8::quantize_with_transposed(x, tiling, opt);
      const QuantizedMatrix a = fp8::quantize(x, tiling, opt), t = fp8::quantize_transposed(x, tiling, opt);
      EXPECT_EQ(both.plain.tiling, tiling);
      EXPECT_EQ(both.transposed.tiling, tiling);
      EXPECT_EQ(bytes_of(both.plain.data), bytes_of(a.data));
      EXPECT_EQ(bytes_of(both.transposed.data), bytes_of(t.data));
      EXPECT_EQ(both.plain.scale.to_vector(), a.scale.to_vector());
      EXPECT_EQ(both.transposed.scale.to_vector(), t.scale.to_vector());
      EXPECT_EQ(both.transposed.scale.strides(), t.scale.strides());
    }
  EXPECT_KILN_ERROR(fp8::quantize_with_transposed(randn<float>({2, 3, 4}), Tiling::row_1x128),
                    "fp8_quantize_with_transposed", "[2, 3, 4]");
  EXPECT_KILN_ERROR(fp8::quantize_with_transposed(randn<float>({0, 4}), Tiling::block_128x128),
                    "fp8_quantize_with_transposed", "[0, 4]");
}

TEST(Fp8Quantize, PowerOfTwoScales) {
  const Tensor<float> x = test_matrix(130, 300, 21);
  fp8::QuantizeOptions opt;
  opt.power_of_two_scale = true;
  check_all_tilings(x, "power of two", opt);
  check_all_tilings(cast<bf16>(x), "power of two", opt);
  for (Tiling t : {Tiling::row_1x128, Tiling::block_128x128}) {
    const std::vector<float> p2 = fp8::quantize(x, t, opt).scale.to_vector();
    const std::vector<float> plain = fp8::quantize(x, t).scale.to_vector();
    for (std::size_t i = 0; i < p2.size(); ++i) {
      int e = 0;
      EXPECT_EQ(std::frexp(p2[i], &e), 0.5f) << p2[i] << " is not a power of two";
      EXPECT_GE(p2[i], plain[i]);
      EXPECT_LT(p2[i], 2.0f * plain[i]);
    }
  }
}

TEST(Fp8Quantize, FloorAndSpecialValues) {
  // Row 0: all zeros (scale = floor / 448, bytes 0). Row 1: amax 896 -> scale exactly 2, with
  // values at e4m3 ties (17 / 2 = 8.5 -> 8, 19 / 2 = 9.5 -> 10), -0, a tiny negative value.
  // Row 2: a NaN (ignored by amax, quantized to 0x7F). Row 3: an inf (scale inf: zeros and NaN).
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<float> v(4 * 130, 0.0f);
  v[130 + 0] = 896.0f;
  v[130 + 1] = 17.0f;
  v[130 + 2] = 19.0f;
  v[130 + 3] = -0.0f;
  v[130 + 4] = -1e-30f;
  v[130 + 5] = -896.0f;
  v[130 + 129] = 3.0f;  // second k-block of row 1
  v[260 + 0] = nan;
  v[260 + 1] = 5.0f;
  v[260 + 2] = -nan;
  v[390 + 0] = inf;
  v[390 + 1] = -2.0f;
  v[390 + 2] = -inf;
  const Tensor<float> x = Tensor<float>::from_vector(v, {4, 130});
  check_all_tilings(x, "special");
  fp8::QuantizeOptions opt;
  opt.amax_floor = 0.5f;
  check_all_tilings(x, "floor 0.5", opt);

  const QuantizedMatrix q = fp8::quantize(x, Tiling::row_1x128);
  EXPECT_EQ(q.scale.at({0, 0}), 1e-4f / 448.0f);
  EXPECT_EQ(q.scale.at({1, 0}), 2.0f);
  EXPECT_EQ(q.scale.at({1, 1}), 3.0f / 448.0f);
  EXPECT_EQ(q.scale.at({2, 0}), 5.0f / 448.0f);
  EXPECT_EQ(q.scale.at({3, 0}), inf);
  EXPECT_EQ(q.data.at({0, 5}).bits, 0x00);
  EXPECT_EQ(static_cast<float>(q.data.at({1, 0})), 448.0f);
  EXPECT_EQ(static_cast<float>(q.data.at({1, 1})), 8.0f);
  EXPECT_EQ(static_cast<float>(q.data.at({1, 2})), 10.0f);
  EXPECT_EQ(q.data.at({1, 3}).bits, 0x80);
  EXPECT_EQ(q.data.at({1, 4}).bits, 0x80);
  EXPECT_EQ(static_cast<float>(q.data.at({1, 5})), -448.0f);
  EXPECT_EQ(static_cast<float>(q.data.at({1, 129})), 448.0f);
  EXPECT_EQ(q.data.at({2, 0}).bits, 0x7F);
  EXPECT_EQ(q.data.at({2, 2}).bits, 0x7F);
  EXPECT_EQ(static_cast<float>(q.data.at({2, 1})), 448.0f);
  EXPECT_EQ(q.data.at({3, 0}).bits, 0x7F);
  EXPECT_EQ(q.data.at({3, 1}).bits, 0x80);
}

TEST(Fp8Quantize, Dequantize) {
  const Tensor<float> x = test_matrix(140, 260, 31);
  for (Tiling t : {Tiling::row_1x128, Tiling::block_128x128}) {
    const QuantizedMatrix q = fp8::quantize(x, t);
    const Tensor<float> d = fp8::dequantize(q);
    ASSERT_EQ(d.shape(), x.shape());
    const std::vector<float> dv = d.to_vector();
    const std::vector<std::uint8_t> b = bytes_of(q.data);
    const std::vector<float> s = q.scale.to_vector();
    const std::int64_t kb = q.scale.size(1);
    for (std::int64_t i = 0; i < 140; ++i)
      for (std::int64_t j = 0; j < 260; ++j) {
        const std::int64_t si = t == Tiling::row_1x128 ? i * kb + j / 128 : (i / 128) * kb + j / 128;
        const double want = e4m3_decode(b[static_cast<std::size_t>(i * 260 + j)]) * s[static_cast<std::size_t>(si)];
        ASSERT_EQ(dv[static_cast<std::size_t>(i * 260 + j)], static_cast<float>(want)) << i << ", " << j;
      }
    // And it is close to x: e4m3 keeps 3 mantissa bits (relative error ≤ 2^-4 away from the
    // subnormals, about 3% in the Frobenius norm for normal data).
    EXPECT_LT(relative_error(d, x), 0.05);
  }
}

TEST(Fp8Quantize, Errors) {
  const Tensor<float> x = randn<float>({3, 5});
  EXPECT_KILN_ERROR(fp8::quantize(randn<float>({2, 3, 4}), Tiling::row_1x128), "fp8_quantize", "[2, 3, 4]");
  EXPECT_KILN_ERROR(fp8::quantize(randn<float>({0, 4}), Tiling::row_1x128), "fp8_quantize", "[0, 4]");
  EXPECT_KILN_ERROR(fp8::quantize_transposed(randn<float>({4, 0}), Tiling::block_128x128), "fp8_quantize", "[4, 0]");
  fp8::QuantizeOptions bad;
  bad.amax_floor = 0.0f;
  EXPECT_KILN_ERROR(fp8::quantize(x, Tiling::row_1x128, bad), "fp8_quantize", "amax_floor", "[3, 5]");
  bad.amax_floor = std::numeric_limits<float>::infinity();
  EXPECT_KILN_ERROR(fp8::quantize(x, Tiling::row_1x128, bad), "fp8_quantize", "amax_floor");
  EXPECT_KILN_ERROR(fp8::quantize(Tensor<float>(), Tiling::row_1x128), "fp8_quantize", "undefined");
}

// ---- GEMM ----

namespace {

// D[m, n] = Σ_kb sa(m, kb) sb(n, kb) Σ_{k in kb} a[m, k] b[n, k] in double, from the bytes and the
// logical scales, with the test's own decoder.
std::vector<double> independent_product(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  const std::int64_t M = a.rows(), N = b.rows(), K = a.cols(), KB = (K + 127) / 128;
  const std::vector<std::uint8_t> ab = bytes_of(a.data), bb = bytes_of(b.data);
  const std::vector<float> as = a.scale.to_vector(), bs = b.scale.to_vector();
  std::vector<double> d(static_cast<std::size_t>(M * N));
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double total = 0.0;
      for (std::int64_t kb = 0; kb < KB; ++kb) {
        double block = 0.0;
        for (std::int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k)
          block += e4m3_decode(ab[static_cast<std::size_t>(m * K + k)]) * e4m3_decode(bb[static_cast<std::size_t>(n * K + k)]);
        const double sa = as[static_cast<std::size_t>(m * KB + kb)];
        const double sb = b.tiling == Tiling::row_1x128 ? bs[static_cast<std::size_t>(n * KB + kb)]
                                                        : bs[static_cast<std::size_t>((n / 128) * KB + kb)];
        total += block * (sa * sb);
      }
      d[static_cast<std::size_t>(m * N + n)] = total;
    }
  return d;
}

struct Mnk {
  std::int64_t m, n, k;
};

}  // namespace

TEST(Fp8Gemm, ReferenceMatchesIndependentLoop) {
  std::uint64_t seed = 40;
  for (const Mnk& s : std::vector<Mnk>{{1, 1, 1}, {7, 33, 65}, {33, 7, 129}, {20, 130, 300}, {5, 16, 576}})
    for (Tiling bt : {Tiling::row_1x128, Tiling::block_128x128}) {
      SCOPED_TRACE(str("M ", s.m, " N ", s.n, " K ", s.k, " B ", fp8::tiling_name(bt)));
      const QuantizedMatrix a = fp8::quantize(test_matrix(s.m, s.k, seed++), Tiling::row_1x128);
      const QuantizedMatrix b = fp8::quantize(test_matrix(s.n, s.k, seed++), bt);
      const Tensor<double> ref = fp8::gemm_reference(a, b);
      ASSERT_EQ(ref.shape(), (Shape{s.m, s.n}));
      EXPECT_LE(relative_error(ref.to_vector(), independent_product(a, b)), 1e-14);
    }
}

TEST(Fp8Gemm, CpuMatchesReference) {
  std::uint64_t seed = 60;
  for (const Mnk& s : std::vector<Mnk>{{1, 1, 1}, {1, 16, 16}, {7, 33, 65}, {33, 7, 129}, {64, 48, 576}, {130, 70, 300},
                                       {65, 129, 112}, {3, 5, 16384}})
    for (Tiling bt : {Tiling::row_1x128, Tiling::block_128x128}) {
      SCOPED_TRACE(str("M ", s.m, " N ", s.n, " K ", s.k, " B ", fp8::tiling_name(bt)));
      const QuantizedMatrix a = fp8::quantize(test_matrix(s.m, s.k, seed++), Tiling::row_1x128);
      const QuantizedMatrix b = fp8::quantize(test_matrix(s.n, s.k, seed++), bt);
      const Tensor<double> ref = fp8::gemm_reference(a, b);
      const Tensor<float> d = fp8::gemm<float>(a, b);
      ASSERT_EQ(d.shape(), (Shape{s.m, s.n}));
      EXPECT_LE(relative_error(d, ref), 1e-5);
      // bf16 output: one rounding to 8 significant bits per element, a relative error of at most
      // 2^-8 each, so at most 2^-8 (+ the FP32 error) in the Frobenius norm too.
      const Tensor<bf16> h = fp8::gemm<bf16>(a, b);
      const double err = relative_error(h, ref);
      EXPECT_LE(err, 0x1p-8 + 1e-5);
      if (s.m * s.n >= 16) {
        EXPECT_GT(err, 0.0);  // (it really is rounded)
      }
      // Options that only matter on a GPU change nothing here.
      fp8::GemmOptions opt;
      opt.promote = false;
      opt.kernel = fp8::GemmKernel::simt;
      opt.promotion_interval = 32;
      EXPECT_EQ(fp8::gemm<float>(a, b, opt).to_vector(), d.to_vector());
    }
}

TEST(Fp8Gemm, MatchesUnquantizedProductApproximately) {
  // The quantized product approximates the float product of the inputs (e4m3 keeps ~2-3%).
  const Tensor<float> x = randn<float>({50, 300}), w = randn<float>({40, 300});
  const Tensor<float> d = fp8::gemm<float>(fp8::quantize(x, Tiling::row_1x128), fp8::quantize(w, Tiling::block_128x128));
  const double err = relative_error(d, matmul(x, transpose(w, 0, 1)));
  EXPECT_LT(err, 0.06);
  EXPECT_GT(err, 1e-3);
}

TEST(Fp8Gemm, ReferenceOnRowSubset) {
  const QuantizedMatrix a = fp8::quantize(test_matrix(70, 200, 80), Tiling::row_1x128);
  const QuantizedMatrix b = fp8::quantize(test_matrix(30, 200, 81), Tiling::block_128x128);
  const Tensor<double> full = fp8::gemm_reference(a, b);
  const std::vector<std::int64_t> rows = {69, 0, 5, 5, 33};
  const Tensor<double> some = fp8::gemm_reference(a, b, rows);
  ASSERT_EQ(some.shape(), (Shape{5, 30}));
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::int64_t n = 0; n < 30; ++n)
      EXPECT_EQ(some.at({static_cast<std::int64_t>(i), n}), full.at({rows[i], n}));
  EXPECT_KILN_ERROR(fp8::gemm_reference(a, b, {70}), "fp8_gemm_reference", "70", "[70, 200]");
}

TEST(Fp8Gemm, RowViewsOfAnOperand) {
  // Rows [3, 50) of a quantized A (data and scales narrowed) give the same product rows.
  const QuantizedMatrix a = fp8::quantize(test_matrix(60, 300, 90), Tiling::row_1x128);
  const QuantizedMatrix b = fp8::quantize(test_matrix(20, 300, 91), Tiling::block_128x128);
  QuantizedMatrix part = a;
  part.data = narrow(a.data, 0, 3, 47);
  part.scale = narrow(a.scale, 0, 3, 47);
  const Tensor<float> d = fp8::gemm<float>(part, b), full = fp8::gemm<float>(a, b);
  EXPECT_EQ(d.to_vector(), contiguous(narrow(full, 0, 3, 47)).to_vector());
  EXPECT_LE(relative_error(d, fp8::gemm_reference(part, b)), 1e-5);
}

TEST(Fp8Gemm, Errors) {
  const QuantizedMatrix a = fp8::quantize(randn<float>({3, 10}), Tiling::row_1x128);
  const QuantizedMatrix b = fp8::quantize(randn<float>({4, 11}), Tiling::block_128x128);
  EXPECT_KILN_ERROR(fp8::gemm<float>(a, b), "fp8_gemm", "[3, 10]", "[4, 11]");
  EXPECT_KILN_ERROR(fp8::gemm_reference(a, b), "fp8_gemm_reference", "[3, 10]", "[4, 11]");

  const QuantizedMatrix ab = fp8::quantize(randn<float>({3, 10}), Tiling::block_128x128);
  EXPECT_KILN_ERROR(fp8::gemm<float>(ab, ab), "fp8_gemm", "1x128", "[3, 10]");

  QuantizedMatrix bad_shape = a;
  bad_shape.scale = zeros<float>({3, 2});
  EXPECT_KILN_ERROR(fp8::gemm<float>(bad_shape, a), "fp8_gemm", "[3, 10]", "[3, 1]", "[3, 2]");

  // Row-major (not k-block major) scales of a 1×128 matrix.
  const QuantizedMatrix wide = fp8::quantize(randn<float>({5, 300}), Tiling::row_1x128);
  QuantizedMatrix row_major = wide;
  row_major.scale = contiguous(wide.scale);
  EXPECT_KILN_ERROR(fp8::gemm<float>(row_major, wide), "fp8_gemm", "k-block major", "[5, 3]");

  QuantizedMatrix bad_blocks = b;
  bad_blocks.scale = zeros<float>({2, 1});
  EXPECT_KILN_ERROR(fp8::gemm<float>(fp8::quantize(randn<float>({2, 11}), Tiling::row_1x128), bad_blocks), "fp8_gemm",
                    "[4, 11]", "[1, 1]", "[2, 1]");

  QuantizedMatrix strided = wide;
  strided.data = slice(wide.data, 1, 0, 300, 2);
  strided.scale = wide.scale;
  EXPECT_KILN_ERROR(fp8::gemm<float>(strided, strided), "fp8_gemm", "[5, 150]");

  EXPECT_KILN_ERROR(fp8::gemm<float>(QuantizedMatrix{}, a), "fp8_gemm", "undefined");
  fp8::GemmOptions interval;
  interval.promotion_interval = 100;
  EXPECT_KILN_ERROR(fp8::gemm<float>(a, a, interval), "fp8_gemm", "promotion_interval", "100", "[3, 10]");
  EXPECT_KILN_ERROR(fp8::dequantize(bad_shape), "fp8_dequantize", "[3, 2]");
}

#ifdef _OPENMP
TEST(Fp8Gemm, CpuResultsAreTheSameForAnyThreadCount) {
  const Tensor<float> x = test_matrix(700, 900, 95), w = test_matrix(300, 900, 96);
  auto run = [&] {
    std::vector<std::vector<std::uint8_t>> bytes;
    std::vector<std::vector<float>> values;
    for (Tiling t : {Tiling::row_1x128, Tiling::block_128x128}) {
      for (const QuantizedMatrix& q : {fp8::quantize(x, t), fp8::quantize_transposed(x, t)}) {
        bytes.push_back(bytes_of(q.data));
        values.push_back(q.scale.to_vector());
      }
    }
    const QuantizedMatrix a = fp8::quantize(x, Tiling::row_1x128), b = fp8::quantize(w, Tiling::block_128x128);
    values.push_back(fp8::gemm<float>(a, b).to_vector());
    const std::vector<double> ref = fp8::gemm_reference(a, b).to_vector();
    values.emplace_back(ref.begin(), ref.end());
    return std::make_pair(bytes, values);
  };
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run();
  omp_set_num_threads(2);
  const auto two = run();
  omp_set_num_threads(3);
  const auto three = run();
  omp_set_num_threads(saved);
  EXPECT_EQ(one.first, two.first);
  EXPECT_EQ(one.first, three.first);
  ASSERT_EQ(one.second.size(), two.second.size());
  for (std::size_t i = 0; i < one.second.size(); ++i) {
    EXPECT_EQ(std::memcmp(one.second[i].data(), two.second[i].data(), one.second[i].size() * sizeof(float)), 0) << i;
    EXPECT_EQ(std::memcmp(one.second[i].data(), three.second[i].data(), one.second[i].size() * sizeof(float)), 0) << i;
  }
}
#endif
