// kiln::fp8 on CUDA (kernels/fp8_gemm/): quantization bit-identical to the CPU's (bytes, scales,
// the padding of the scale storage) for every tiling, transposed or not, float and bf16, odd and
// large shapes, non-contiguous and misaligned inputs, special values and both scale options; the
// GEMM kernels (hopper and simt) against the float64 reference of the same quantized operands on
// the issue's shapes (rows subsets for large M) and odd ones, both B tilings, f32 and bf16 outputs;
// kernel selection and its errors. quantize_with_transposed (x and xᵀ from one read) in every
// quantization case.
// Tolerances (relative Frobenius error against float64): see tolerance() below — derived from the
// tensor cores' accumulation precision for the Hopper kernel, FP32 rounding for the plain kernel.
#include <kiln/ops/fp8_gemm.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using fp8::GemmKernel;
using fp8::QuantizedMatrix;
using fp8::Tiling;

namespace {

std::vector<std::uint8_t> bytes_of(const Tensor<fp8_e4m3>& t) {
  std::vector<std::uint8_t> out;
  for (const fp8_e4m3& v : t.to_vector()) out.push_back(v.bits);
  return out;
}

std::vector<std::uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<std::uint32_t> out;
  for (float f : v) out.push_back(std::bit_cast<std::uint32_t>(f));
  return out;
}

// The whole scale storage (row tiling: [kblocks, ld] including the padding rows).
std::vector<float> scale_storage(const QuantizedMatrix& q) {
  if (q.tiling == Tiling::block_128x128) return q.scale.to_vector();
  const std::int64_t kb = q.scale.size(1), ld = q.scale.stride(1);
  return Tensor<float>::view_of(q.scale.storage(), q.scale.offset(), {kb, ld}, {ld, 1}).to_vector();
}

// A GPU quantization g against the CPU's c: bytes, scales and the scale storage's padding.
void expect_same(const QuantizedMatrix& g, const QuantizedMatrix& c) {
  ASSERT_EQ(g.device(), gpu);
  ASSERT_EQ(g.scale.device(), gpu);
  ASSERT_EQ(g.data.shape(), c.data.shape());
  ASSERT_EQ(g.scale.shape(), c.scale.shape());
  ASSERT_EQ(g.scale.strides(), c.scale.strides());
  const std::vector<std::uint8_t> gb = bytes_of(g.data), cb = bytes_of(c.data);
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < gb.size(); ++i)
    if (gb[i] != cb[i] && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << "first mismatch at " << first << " (row " << first / static_cast<std::size_t>(c.cols())
                     << ", col " << first % static_cast<std::size_t>(c.cols()) << "): gpu "
                     << int(gb.empty() ? 0 : gb[first]) << ", cpu " << int(cb.empty() ? 0 : cb[first]);
  EXPECT_EQ(bits_of(scale_storage(g)), bits_of(scale_storage(c)));
}

// GPU quantization of x_gpu against the CPU's of x_cpu (the same values, same view): every tiling,
// transposed or not, and x with xᵀ at once (quantize_with_transposed: with KILN_FP8_ONE_READ on
// one launch for a view with contiguous rows, bf16 for 1×128 tiles; off, two; the callers poison
// the memory).
template <class T>
void expect_same_quantization(const Tensor<T>& x_cpu, const Tensor<T>& x_gpu, const std::string& what,
                              fp8::QuantizeOptions opt = {}) {
  for (Tiling tiling : {Tiling::row_1x128, Tiling::block_128x128})
    for (bool transposed : {false, true}) {
      SCOPED_TRACE(str(what, " ", dtype_of<T>, " ", x_cpu.shape(), " strides ", x_gpu.strides(), " ",
                       fp8::tiling_name(tiling), transposed ? " transposed" : ""));
      const QuantizedMatrix c = transposed ? fp8::quantize_transposed(x_cpu, tiling, opt) : fp8::quantize(x_cpu, tiling, opt);
      const QuantizedMatrix g = transposed ? fp8::quantize_transposed(x_gpu, tiling, opt) : fp8::quantize(x_gpu, tiling, opt);
      expect_same(g, c);
    }
  for (const bool one_read : {true, false}) {
    const ScopedEnv setting("KILN_FP8_ONE_READ", one_read ? "on" : "off");
    for (Tiling tiling : {Tiling::row_1x128, Tiling::block_128x128}) {
      SCOPED_TRACE(str(what, " ", dtype_of<T>, " ", x_cpu.shape(), " strides ", x_gpu.strides(), " ",
                       fp8::tiling_name(tiling), " with transposed", one_read ? ", one read" : ""));
      const fp8::QuantizedPair both = fp8::quantize_with_transposed(x_gpu, tiling, opt);
      expect_same(both.plain, fp8::quantize(x_cpu, tiling, opt));
      expect_same(both.transposed, fp8::quantize_transposed(x_cpu, tiling, opt));
    }
  }
}

// Values whose magnitude varies by row and column block, with outliers and zero runs.
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
      if (i == rows - 1 && j < 128 && rows > 2) v[k] = 0.0f;
    }
  return Tensor<float>::from_vector(v, {rows, cols});
}

template <class T>
void check_views(const Tensor<float>& base, const std::string& what) {
  const Tensor<T> c = cast<T>(base), g = on_gpu(c);
  const std::int64_t r = base.size(0), k = base.size(1);
  expect_same_quantization(c, g, what + " contiguous");
  expect_same_quantization(transpose(c, 0, 1), transpose(g, 0, 1), what + " transposed view");
  if (k > 2) {
    expect_same_quantization(narrow(c, 1, 1, k - 2), narrow(g, 1, 1, k - 2), what + " misaligned columns");
    expect_same_quantization(slice(c, 1, 0, k, 2), slice(g, 1, 0, k, 2), what + " strided columns");
  }
  if (r > 2) expect_same_quantization(narrow(c, 0, 1, r - 1), narrow(g, 0, 1, r - 1), what + " offset rows");
}

}  // namespace

TEST(Fp8QuantizeCuda, BitIdenticalToCpuAtOddShapes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::uint64_t seed = 1;
  for (const Shape& s : std::vector<Shape>{{1, 1}, {1, 200}, {2, 8}, {7, 33}, {128, 128}, {129, 257}, {300, 1},
                                           {1000, 1003}, {256, 4096}, {4099, 130}, {64, 7168}}) {
    const Tensor<float> x = test_matrix(s[0], s[1], seed++);
    check_views<float>(x, "float");
    check_views<bf16>(x, "bf16");
  }
}

TEST(Fp8QuantizeCuda, BitIdenticalToCpuLarge) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const Tensor<float> x = test_matrix(4096, 7168, 77);
  expect_same_quantization(x, on_gpu(x), "large");
  const Tensor<bf16> xb = cast<bf16>(x);
  expect_same_quantization(xb, on_gpu(xb), "large");
}

TEST(Fp8QuantizeCuda, SpecialValuesAndOptions) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Tiles holding NaN, ±inf, ±0, float subnormals, huge values, values at e4m3 ties for a scale of
  // exactly 2 (amax 896), and ordinary values.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::int64_t rows = 260, cols = 390;
  std::vector<float> v = test_matrix(rows, cols, 5).to_vector();
  auto at = [&](std::int64_t i, std::int64_t j) -> float& { return v[static_cast<std::size_t>(i * cols + j)]; };
  for (std::int64_t j = 0; j < 128; ++j) {
    at(0, j) = 0.0f;                       // zero run: the floor
    at(1, j) = (j % 2 ? -1.0f : 1.0f) * std::ldexp(1.0f, -140 + static_cast<int>(j % 10));  // subnormals
    at(2, j) = 2.0f * (8.0f + 0.5f * static_cast<float>(j % 32));  // ties and exact values, scale 2
    at(3, j) = (j % 3 == 0 ? -1.0f : 1.0f) * 3.0e38f / static_cast<float>(j + 1);  // huge
    at(4, j) = j % 2 ? -0.0f : 1e-30f;
  }
  at(2, 5) = 896.0f;
  at(2, 7) = -896.0f;
  at(5, 3) = nan;
  at(6, 4) = -nan;
  at(7, 130) = inf;
  at(8, 131) = -inf;
  at(200, 300) = inf;
  at(201, 301) = nan;
  const Tensor<float> x = Tensor<float>::from_vector(v, {rows, cols});
  const Tensor<float> xg = on_gpu(x);
  expect_same_quantization(x, xg, "special");
  expect_same_quantization(transpose(x, 0, 1), transpose(xg, 0, 1), "special transposed view");
  expect_same_quantization(cast<bf16>(x), on_gpu(cast<bf16>(x)), "special");
  fp8::QuantizeOptions opt;
  opt.power_of_two_scale = true;
  expect_same_quantization(x, xg, "power of two", opt);
  expect_same_quantization(cast<bf16>(x), on_gpu(cast<bf16>(x)), "power of two", opt);
  opt.power_of_two_scale = false;
  opt.amax_floor = 0.25f;
  expect_same_quantization(x, xg, "floor 0.25", opt);
  opt.amax_floor = 1e-30f;
  expect_same_quantization(x, xg, "floor 1e-30", opt);
}

// ---- GEMM ----

namespace {

// Rows of the device matrix d [M, N], in the order given, as doubles.
template <class Out>
std::vector<double> rows_of(const Tensor<Out>& d, const std::vector<std::int64_t>& rows) {
  std::vector<double> out;
  for (std::int64_t r : rows)
    for (const Out& v : narrow(d, 0, r, 1).to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// All rows when M is small, else `count` rows (first, last and random ones).
std::vector<std::int64_t> some_rows(std::int64_t m, std::int64_t count, std::uint64_t seed) {
  std::vector<std::int64_t> rows;
  if (m <= count) {
    for (std::int64_t i = 0; i < m; ++i) rows.push_back(i);
    return rows;
  }
  rows = {0, m - 1};
  Generator gen{seed, 0};
  for (double u : rand<double>({count - 2}, 0.0, 1.0, Device::cpu(), gen).to_vector())
    rows.push_back(std::min(m - 1, static_cast<std::int64_t>(u * static_cast<double>(m))));
  return rows;
}

// Relative Frobenius error allowed for an FP32 output of `kernel`.
//   simt: FP32 products and sums, about 1e-6 at these sizes: 1e-5.
//   hopper: the FP8 tensor cores keep 13 mantissa bits and truncate (round toward zero) each
//   wgmma's sum of its 32 products and the incoming accumulator; one promotion run chains
//   S = interval / 32 of them. wgmma j of a run shrinks its partial sum P_j by less than 2^-13 of
//   it, and P_j is j/S of the run's sum on average, so the error stays below 2^-13 · (S + 1) / 2:
//   1.2e-4 (interval 32), 1.8e-4 (64), 3.1e-4 (128). Truncation averages half its maximum, so
//   large samples sit near half the bound: measured on an H100 at K = 16384, 4.4e-5, 7.3e-5 and
//   1.25e-4 (docs/fp8-gemm.md). The issue's target (1e-4 at K = 16384) is checked separately.
// bf16 outputs add one rounding to 8 significant bits: 2^-8.
template <class Out>
double tolerance(GemmKernel kernel, int promotion_interval) {
  const double f32 = kernel == GemmKernel::simt ? 1e-5 : 0x1p-13 * (promotion_interval / 32 + 1) / 2.0;
  return std::is_same_v<Out, float> ? f32 : 0x1p-8 + f32;
}

// Whether the one launch in `trace` was `kernel` (the Hopper kernel split along K or not); for
// automatic, `automatic_picks` says which it must have chosen (automatic: either).
void expect_ran(const KernelTrace& trace, GemmKernel kernel, GemmKernel automatic_picks = GemmKernel::automatic) {
  ASSERT_EQ(trace.count("fp8_gemm"), 1) << "launches of fp8_gemm";
  const GemmKernel want = kernel == GemmKernel::automatic ? automatic_picks : kernel;
  if (want == GemmKernel::automatic) return;
  const std::string& ran = trace.launches().front();
  if (want == GemmKernel::hopper)
    EXPECT_TRUE(ran == "fp8_gemm/hopper" || ran == "fp8_gemm/hopper_split_k" || ran == "fp8_gemm/hopper_multicast")
        << "ran " << ran;
  else
    EXPECT_EQ(ran, "fp8_gemm/simt");
}

// D = A·Bᵀ with `kernel` against the float64 reference rows; checks that `kernel` is what ran.
template <class Out>
void expect_gemm(const QuantizedMatrix& a, const QuantizedMatrix& b, GemmKernel kernel,
                 const std::vector<std::int64_t>& rows, const Tensor<double>& ref, const std::string& what,
                 int promotion_interval = 128, GemmKernel automatic_picks = GemmKernel::automatic) {
  SCOPED_TRACE(str(what, " M ", a.rows(), " N ", b.rows(), " K ", a.cols(), " B ", fp8::tiling_name(b.tiling), " ",
                   dtype_of<Out>, " kernel ",
                   kernel == GemmKernel::hopper ? "hopper" : kernel == GemmKernel::simt ? "simt" : "automatic",
                   " promotion every ", promotion_interval));
  fp8::GemmOptions opt;
  opt.kernel = kernel;
  opt.promotion_interval = promotion_interval;
  KernelTrace trace;
  const Tensor<Out> d = fp8::gemm<Out>(a, b, opt);
  expect_ran(trace, kernel, automatic_picks);
  ASSERT_EQ(d.device(), gpu);
  ASSERT_EQ(d.shape(), (Shape{a.rows(), b.rows()}));
  EXPECT_TRUE(d.is_contiguous());
  EXPECT_LE(relative_error(rows_of(d, rows), ref.to_vector()), tolerance<Out>(kernel, promotion_interval));
}

// A GPU matrix of uniform values scaled per row by factors in [0.01, 10] (so tiles differ).
Tensor<float> gpu_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  Generator gen{seed, 0};
  const Tensor<float> x = on_gpu(rand<float>({rows, cols}, -1.0, 1.0, Device::cpu(), gen));
  const Tensor<float> f = on_gpu(exp(rand<float>({rows, 1}, -4.6, 2.3, Device::cpu(), gen)));
  return mul(x, f);
}

struct NK {
  std::int64_t n, k;
};

}  // namespace

TEST(Fp8GemmCuda, IssueShapes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::uint64_t seed = 100;
  for (const NK& s : std::vector<NK>{{2112, 7168}, {24576, 1536}, {32768, 512}, {7168, 16384}, {4096, 7168}, {7168, 2048}}) {
    const QuantizedMatrix b = fp8::quantize(gpu_matrix(s.n, s.k, seed++), Tiling::block_128x128);
    const Tensor<float> xa = gpu_matrix(4096, s.k, seed++);
    for (std::int64_t m : {1, 64, 128, 4096}) {
      const QuantizedMatrix a = fp8::quantize(narrow(xa, 0, 0, m), Tiling::row_1x128);
      const std::vector<std::int64_t> rows = some_rows(m, 12, seed++);
      const Tensor<double> ref = fp8::gemm_reference(a, b, rows);
      for (GemmKernel kernel : {GemmKernel::hopper, GemmKernel::simt}) expect_gemm<float>(a, b, kernel, rows, ref, "issue");
      if (m == 128) {
        expect_gemm<bf16>(a, b, GemmKernel::automatic, rows, ref, "issue", 128, GemmKernel::hopper);
        for (int interval : {32, 64}) expect_gemm<float>(a, b, GemmKernel::hopper, rows, ref, "issue", interval);
      }
    }
  }
  // The issue's accuracy target: relative error <= 1e-4 at K = 16384, met with promotion every 64
  // of K (the default, every 128 as in DeepSeek-V3, measures 1.25e-4 on an H100: see tolerance()).
  {
    const QuantizedMatrix bk = fp8::quantize(gpu_matrix(1024, 16384, seed++), Tiling::block_128x128);
    const QuantizedMatrix ak = fp8::quantize(gpu_matrix(512, 16384, seed++), Tiling::row_1x128);
    const std::vector<std::int64_t> rows = some_rows(512, 64, seed++);
    const Tensor<double> ref = fp8::gemm_reference(ak, bk, rows);
    fp8::GemmOptions opt;
    opt.kernel = GemmKernel::hopper;
    opt.promotion_interval = 64;
    EXPECT_LE(relative_error(rows_of(fp8::gemm<float>(ak, bk, opt), rows), ref.to_vector()), 1e-4);
  }
  // 1×128 tiles for B too (the weight gradient's operands).
  const QuantizedMatrix b = fp8::quantize(gpu_matrix(2112, 7168, seed++), Tiling::row_1x128);
  const QuantizedMatrix a = fp8::quantize(gpu_matrix(64, 7168, seed++), Tiling::row_1x128);
  const std::vector<std::int64_t> rows = some_rows(64, 12, seed++);
  const Tensor<double> ref = fp8::gemm_reference(a, b, rows);
  for (GemmKernel kernel : {GemmKernel::hopper, GemmKernel::simt}) {
    expect_gemm<float>(a, b, kernel, rows, ref, "B in 1x128 tiles");
    expect_gemm<bf16>(a, b, kernel, rows, ref, "B in 1x128 tiles");
  }
}

// Few rows leave most SMs idle, so the Hopper kernel splits K (gemm_hopper.cuh: 64 × 2112 has 33
// tiles of 64 × 64; 56 k-blocks in 4 splits) and a second kernel adds the splits in a fixed order.
// The result must be the same bits on every run, whatever memory the workspace reuses.
TEST(Fp8GemmCuda, SplitKIsBitIdenticalAcrossRuns) {
  KILN_REQUIRE_GPU();
  const QuantizedMatrix b = fp8::quantize(gpu_matrix(2112, 7168, 900), Tiling::block_128x128);
  for (std::int64_t m : {1, 64}) {
    const QuantizedMatrix a = fp8::quantize(gpu_matrix(m, 7168, 901), Tiling::row_1x128);
    for (bool f32 : {true, false}) {
      SCOPED_TRACE(str("M ", m, f32 ? " f32" : " bf16"));
      fp8::GemmOptions opt;
      opt.kernel = GemmKernel::hopper;
      std::vector<std::uint32_t> first;
      for (int run = 0; run < 4; ++run) {
        if (run == 2) poison_cached_memory();
        KernelTrace trace;
        std::vector<std::uint32_t> bits;
        if (f32) {
          bits = bits_of(fp8::gemm<float>(a, b, opt).to_vector());
        } else {
          for (const bf16& v : fp8::gemm<bf16>(a, b, opt).to_vector()) bits.push_back(v.bits);
        }
        ASSERT_EQ(trace.launches(), std::vector<std::string>{"fp8_gemm/hopper_split_k"});
        if (run == 0)
          first = bits;
        else
          EXPECT_EQ(bits, first) << "run " << run;
      }
    }
  }
}

namespace {

// A setting of the Hopper kernel that changes only how the work is scheduled: with the environment
// variable `setting` off and on, D must be the same bits (FP32 and bf16 outputs), and within the
// tolerance against float64 where promoted. For each M of `ms`, N 2112 (an edge N-tile of 64
// columns), K 7168 and 1040 (a partial k-block), both weight tilings, each promotion interval of
// `intervals` (0: no promotion, 128×128 weight blocks only). variant(on): the fp8_gemm launch each
// must record, when not empty.
void expect_setting_keeps_bits(const char* setting, const std::vector<std::int64_t>& ms,
                               const std::vector<int>& intervals, std::uint64_t seed,
                               const std::function<std::string(bool)>& variant) {
  for (std::int64_t m : ms)
    for (std::int64_t k : {7168, 1040})
      for (Tiling bt : {Tiling::block_128x128, Tiling::row_1x128}) {
        const QuantizedMatrix a = fp8::quantize(gpu_matrix(m, k, seed++), Tiling::row_1x128);
        const QuantizedMatrix b = fp8::quantize(gpu_matrix(2112, k, seed++), bt);
        const std::vector<std::int64_t> rows = some_rows(m, 16, seed++);
        const Tensor<double> ref = fp8::gemm_reference(a, b, rows);
        for (int interval : intervals) {
          if (interval == 0 && bt != Tiling::block_128x128) continue;
          SCOPED_TRACE(str(setting, ": M ", m, " K ", k, " B ", fp8::tiling_name(bt), " promotion every ", interval));
          fp8::GemmOptions opt;
          opt.kernel = GemmKernel::hopper;
          opt.promote = interval > 0;
          opt.promotion_interval = interval > 0 ? interval : 128;
          std::vector<std::uint32_t> bits[2];
          std::vector<std::uint16_t> bf_bits[2];
          for (int on = 0; on < 2; ++on) {
            const ScopedEnv env(setting, on ? "on" : "off");
            poison_cached_memory();
            KernelTrace trace;
            const Tensor<float> d = fp8::gemm<float>(a, b, opt);
            bits[on] = bits_of(d.to_vector());
            if (const std::string want = variant(on != 0); !want.empty()) {
              EXPECT_EQ(trace.launches(), std::vector<std::string>{want});
            }
            if (opt.promote) {
              EXPECT_LE(relative_error(rows_of(d, rows), ref.to_vector()),
                        tolerance<float>(GemmKernel::hopper, interval));
            }
            for (const bf16& v : fp8::gemm<bf16>(a, b, opt).to_vector()) bf_bits[on].push_back(v.bits);
          }
          EXPECT_TRUE(bits[0] == bits[1]) << "FP32 outputs differ with " << setting << " on and off";
          EXPECT_TRUE(bf_bits[0] == bf_bits[1]) << "bf16 outputs differ with " << setting << " on and off";
        }
      }
}

}  // namespace

// The two consumer warpgroups issue their wgmmas in turns (KILN_FP8_PINGPONG, on by default) or
// freely: only the timing changes, every warpgroup sums in the same order, so the bits must be equal.
// Shapes with two consumers: 1000 × 2112 (128 × 128 tiles, promotion after each group), 200 × 2112
// (128 × 64 tiles split along K, the promotion overlapped within each warpgroup), at every
// promotion interval, both weight tilings, an odd K, FP32 and bf16 outputs.
TEST(Fp8GemmCuda, TurnsGiveTheSameBits) {
  KILN_REQUIRE_GPU();
  expect_setting_keeps_bits("KILN_FP8_PINGPONG", {1000, 200}, {128, 64, 32}, 500, [](bool) { return std::string(); });
}

// 128 × 128 tiles run in 2-CTA clusters sharing the B tile by TMA multicast (KILN_FP8_MULTICAST=on)
// or one CTA a tile: each tile's sums are the same either way, so the bits must be
// equal. M 1000 (8 M-tiles: 4 pairs), 1100 (9: the last pair's second CTA has no rows), 4224 (33
// M-tiles × 17 N-tiles: more pairs than clusters, so each cluster runs several in turn); promotion
// every 128 and 64 and none.
TEST(Fp8GemmCuda, MulticastGivesTheSameBits) {
  KILN_REQUIRE_GPU();
  if (!gpu_is_hopper()) GTEST_SKIP() << "the multicast kernel is the Hopper kernel's";
  expect_setting_keeps_bits("KILN_FP8_MULTICAST", {1000, 1100, 4224}, {128, 64, 0}, 900, [](bool on) {
    return std::string(on ? "fp8_gemm/hopper_multicast" : "fp8_gemm/hopper");
  });
}

TEST(Fp8GemmCuda, OddShapes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::uint64_t seed = 300;
  for (std::int64_t m : {1, 7, 33, 200, 1000})
    for (const NK& s : std::vector<NK>{{16, 576}, {48, 112}, {2112, 16}, {16, 16}, {2112, 576}})
      for (Tiling bt : {Tiling::block_128x128, Tiling::row_1x128}) {
        const QuantizedMatrix a = fp8::quantize(gpu_matrix(m, s.k, seed++), Tiling::row_1x128);
        const QuantizedMatrix b = fp8::quantize(gpu_matrix(s.n, s.k, seed++), bt);
        const std::vector<std::int64_t> rows = some_rows(m, 40, seed++);
        const Tensor<double> ref = fp8::gemm_reference(a, b, rows);
        for (GemmKernel kernel : {GemmKernel::hopper, GemmKernel::simt, GemmKernel::automatic}) {
          expect_gemm<float>(a, b, kernel, rows, ref, "odd");
          expect_gemm<bf16>(a, b, kernel, rows, ref, "odd");
        }
      }
}

TEST(Fp8GemmCuda, ShapesOnlyTheSimtKernelTakes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::uint64_t seed = 500;
  for (std::int64_t m : {1, 7, 65})
    for (std::int64_t n : {1, 7, 33, 100})
      for (std::int64_t k : {1, 33, 129, 200}) {
        const QuantizedMatrix a = fp8::quantize(gpu_matrix(m, k, seed++), Tiling::row_1x128);
        const QuantizedMatrix b = fp8::quantize(gpu_matrix(n, k, seed++), n % 2 ? Tiling::block_128x128 : Tiling::row_1x128);
        const std::vector<std::int64_t> rows = some_rows(m, 65, seed++);
        const Tensor<double> ref = fp8::gemm_reference(a, b, rows);
        expect_gemm<float>(a, b, GemmKernel::simt, rows, ref, "simt only");
        expect_gemm<bf16>(a, b, GemmKernel::simt, rows, ref, "simt only");
        expect_gemm<float>(a, b, GemmKernel::automatic, rows, ref, "falls back to simt", 128, GemmKernel::simt);
        if (n % 16 != 0 || k % 16 != 0) {
          fp8::GemmOptions opt;
          opt.kernel = GemmKernel::hopper;
          EXPECT_KILN_ERROR(fp8::gemm<float>(a, b, opt), "fp8_gemm", "Hopper", str(a.data.shape()), str(b.data.shape()));
        }
      }
}

TEST(Fp8GemmCuda, MisalignedRowViewFallsBack) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Rows [1, 300) of a quantized A: the scales start 4 bytes into their storage, so the automatic
  // choice takes the simt kernel; the result matches the reference and the rows of the full product.
  const QuantizedMatrix a = fp8::quantize(gpu_matrix(300, 640, 1), Tiling::row_1x128);
  const QuantizedMatrix b = fp8::quantize(gpu_matrix(256, 640, 2), Tiling::block_128x128);
  QuantizedMatrix part = a;
  part.data = narrow(a.data, 0, 1, 299);
  part.scale = narrow(a.scale, 0, 1, 299);
  const std::vector<std::int64_t> rows = some_rows(299, 40, 3);
  const Tensor<double> ref = fp8::gemm_reference(part, b, rows);
  expect_gemm<float>(part, b, GemmKernel::automatic, rows, ref, "row view", 128, GemmKernel::simt);
  expect_gemm<float>(part, b, GemmKernel::simt, rows, ref, "row view");
  fp8::GemmOptions opt;
  opt.kernel = GemmKernel::hopper;
  EXPECT_KILN_ERROR(fp8::gemm<float>(part, b, opt), "fp8_gemm", "aligned", "[299, 640]");
}

TEST(Fp8GemmCuda, Errors) {
  KILN_REQUIRE_GPU();
  const QuantizedMatrix ag = fp8::quantize(gpu_matrix(4, 64, 1), Tiling::row_1x128);
  const QuantizedMatrix bc = fp8::quantize(randn<float>({16, 64}), Tiling::block_128x128);
  EXPECT_KILN_ERROR(fp8::gemm<float>(ag, bc), "fp8_gemm", "[4, 64]", "[16, 64]", "cuda");
  const QuantizedMatrix bk = fp8::quantize(gpu_matrix(16, 80, 2), Tiling::block_128x128);
  EXPECT_KILN_ERROR(fp8::gemm<float>(ag, bk), "fp8_gemm", "[4, 64]", "[16, 80]");
  QuantizedMatrix mixed = ag;
  mixed.scale = fp8::quantize(randn<float>({4, 64}), Tiling::row_1x128).scale;
  EXPECT_KILN_ERROR(fp8::gemm<float>(mixed, bk), "fp8_gemm", "[4, 64]", "cpu");
}
