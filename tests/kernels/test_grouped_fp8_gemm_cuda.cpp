// kiln::fp8 grouped GEMM on CUDA (kernels/grouped_fp8_gemm/): the Hopper and plain kernels against
// the float64 product of the dequantized operands, with group sizes 0, 1 and non-multiples of 128,
// 64 groups, DeepSeek-V3's expert shapes (forward and the dgrad layout), the masked layout; every
// output written into a NaN-filled buffer, so that a valid row left unwritten shows as NaN and a
// row written that should not be (another group's, a masked slot's padding) loses its NaN; the
// grouped weight quantization bit-identical to the CPU's; kernel selection and its errors.
// Tolerances (relative Frobenius error): the dense FP8 GEMM's (test_fp8_gemm_cuda.cpp): Hopper
// 2^-13 · (128/32 + 1) / 2 = 3.1e-4 with promotion every 128 of K, plain kernel 1e-5; bf16 outputs
// add 2^-8.
#include <kiln/ops/grouped_fp8_gemm.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "grouped_fp8_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using fp8::GroupedGemmKernel;

namespace {

double grouped_tolerance(GroupedGemmKernel kernel, bool bf16_out) {
  const double f32 = kernel == GroupedGemmKernel::simt ? 1e-5 : 0x1p-13 * (128 / 32 + 1) / 2.0;
  return bf16_out ? 0x1p-8 + f32 : f32;
}

const char* kernel_name(GroupedGemmKernel k) {
  return k == GroupedGemmKernel::hopper ? "hopper" : k == GroupedGemmKernel::simt ? "simt" : "automatic";
}

// Uniform values scaled per row (of the flattened leading dims) by factors in [0.01, 10], on the GPU.
Tensor<float> gpu_values(const Shape& shape, std::uint64_t seed) {
  Generator gen{seed, 0};
  std::int64_t rows = 1;
  for (std::size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  const std::int64_t cols = shape.back();
  const Tensor<float> x = on_gpu(rand<float>({rows, cols}, -1.0, 1.0, Device::cpu(), gen));
  const Tensor<float> f = on_gpu(exp(rand<float>({rows, 1}, -4.6, 2.3, Device::cpu(), gen)));
  return reshape(mul(x, f), shape);
}

// The rows checked in group [start, start + count): all of them when few, else the first, the
// last, and `extra` spread between.
void pick_rows(std::int64_t start, std::int64_t count, int g, std::int64_t extra, std::vector<std::int64_t>& rows,
               std::vector<int>& groups) {
  const std::int64_t step = count <= extra + 2 ? 1 : count / (extra + 1);
  for (std::int64_t i = 0; i < count; i += step) {
    rows.push_back(start + i);
    groups.push_back(g);
  }
  if (count > 0 && rows.back() != start + count - 1) {
    rows.push_back(start + count - 1);
    groups.push_back(g);
  }
}

// Rows `rows` of a device matrix viewed as [rows_total, N], as doubles.
template <class Out>
std::vector<double> rows_of(const Tensor<Out>& d2, const std::vector<std::int64_t>& rows) {
  const std::vector<Out> all = on_cpu(d2).to_vector();
  const std::int64_t n = d2.size(d2.dim() - 1);
  std::vector<double> out;
  for (std::int64_t r : rows)
    for (std::int64_t j = 0; j < n; ++j) out.push_back(static_cast<double>(all[static_cast<std::size_t>(r * n + j)]));
  return out;
}

// Contiguous product of every kernel and output type into NaN-filled buffers, against ref for
// (rows, groups); every row outside `rows` that belongs to no group would stay NaN (none here:
// offsets cover all rows, and all rows are checked when extra is large).
template <class Index>
void expect_contiguous(const fp8::QuantizedMatrix& a, const fp8::GroupedWeights& b, const Tensor<Index>& offsets,
                       std::int64_t extra, const std::string& what,
                       std::vector<GroupedGemmKernel> kernels = {GroupedGemmKernel::hopper, GroupedGemmKernel::simt}) {
  std::vector<std::int64_t> rows;
  std::vector<int> groups;
  const std::vector<Index> o = on_cpu(offsets).to_vector();
  for (std::size_t g = 0; g + 1 < o.size(); ++g) pick_rows(o[g], o[g + 1] - o[g], static_cast<int>(g), extra, rows, groups);
  const std::vector<double> ref = dequantized_product(a, b, rows, groups);
  const Tensor<Index> og = on_gpu(offsets);
  for (GroupedGemmKernel kernel : kernels)
    for (bool bf : {false, true}) {
      SCOPED_TRACE(str(what, " R ", a.rows(), " G ", b.groups(), " N ", b.rows(), " K ", b.cols(), " ",
                       kernel_name(kernel), bf ? " bf16" : " f32", " ", dtype_of<Index>, " offsets"));
      std::vector<double> got;
      std::vector<std::string> ran;
      const auto run = [&](auto& d) {
        KernelTrace trace;
        fp8::grouped_gemm_out(d, a, b, og, {.kernel = kernel});
        ran = trace.launches();
        got = rows_of(d, rows);
      };
      if (bf) {
        Tensor<bf16> d = full<bf16>({a.rows(), b.rows()}, bf16(std::numeric_limits<float>::quiet_NaN()), gpu);
        run(d);
      } else {
        Tensor<float> d = full<float>({a.rows(), b.rows()}, std::numeric_limits<float>::quiet_NaN(), gpu);
        run(d);
      }
      EXPECT_EQ(ran, std::vector<std::string>{str("grouped_fp8_gemm/", kernel_name(kernel))});
      EXPECT_LE(relative_error(got, ref), grouped_tolerance(kernel, bf));
    }
}

}  // namespace

TEST(GroupedFp8GemmCuda, OddGroupSizes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const std::vector<std::int64_t> sizes{0, 1, 127, 128, 129, 300, 0, 5, 700, 2, 0};
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const std::int64_t G = static_cast<std::int64_t>(sizes.size());
  std::uint64_t seed = 1;
  // N and K multiples of 128; multiples of 16 only (a partial last k-block and column tile).
  for (const auto& [n, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{{256, 512}, {208, 336}, {16, 16}}) {
    const fp8::QuantizedMatrix a = fp8::quantize(gpu_values({R, k}, seed++), fp8::Tiling::row_1x128);
    const fp8::GroupedWeights b = fp8::quantize_grouped(gpu_values({G, n, k}, seed++));
    expect_contiguous(a, b, offsets_of<std::int64_t>(sizes), 1 << 20, "odd groups");
    expect_contiguous(a, b, offsets_of<std::int32_t>(sizes), 1 << 20, "odd groups", {GroupedGemmKernel::hopper});
  }
}

TEST(GroupedFp8GemmCuda, SixtyFourGroups) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::vector<std::int64_t> sizes;
  for (int g = 0; g < 64; ++g) sizes.push_back(g % 9 == 4 ? 0 : (g * 37) % 150 + (g % 5 == 0 ? 128 : 0));
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const fp8::QuantizedMatrix a = fp8::quantize(gpu_values({R, 384}, 11), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(gpu_values({64, 384, 384}, 12));
  expect_contiguous(a, b, offsets_of<std::int64_t>(sizes), 1 << 20, "64 groups");
}

TEST(GroupedFp8GemmCuda, DeepSeekV3Shapes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const std::vector<std::int64_t> sizes{0, 1, 511, 1000, 129, 1500, 77, 300};
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  std::uint64_t seed = 21;
  for (const auto& [n, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4096, 7168}, {7168, 2048}}) {
    const Tensor<float> w = gpu_values({8, n, k}, seed++);
    // Forward: x [R, K] · W_gᵀ.
    const fp8::QuantizedMatrix x = fp8::quantize(gpu_values({R, k}, seed++), fp8::Tiling::row_1x128);
    expect_contiguous(x, fp8::quantize_grouped(w), offsets_of<std::int64_t>(sizes), 6, "forward",
                      {GroupedGemmKernel::hopper});
    // Data gradient: dY [R, N] · W_g through W_gᵀ quantized by blocks.
    const fp8::QuantizedMatrix dy = fp8::quantize(gpu_values({R, n}, seed++), fp8::Tiling::row_1x128);
    expect_contiguous(dy, fp8::quantize_grouped_transposed(w), offsets_of<std::int64_t>(sizes), 6, "dgrad",
                      {GroupedGemmKernel::hopper});
  }
}

namespace {

// A setting of the Hopper kernel that changes only how the work is scheduled: with the environment
// variable `setting` off and on, the grouped product over groups of `sizes` rows (N 784: a partial
// column tile; K 2064: a partial k-block) must be the same bits, FP32 and bf16 outputs in
// NaN-filled buffers (memcmp: NaN left anywhere would differ from itself under ==), with
// variant(on) the launch recorded, and within tolerance of float64 at each group's first and last
// rows and `extra` between (a row left unwritten is NaN).
void expect_grouped_setting_keeps_bits(const char* setting, const std::vector<std::int64_t>& sizes, std::int64_t extra,
                                       std::uint64_t seed, const std::function<std::string(bool)>& variant) {
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const std::int64_t G = static_cast<std::int64_t>(sizes.size()), N = 784, K = 2064;
  const fp8::QuantizedMatrix a = fp8::quantize(gpu_values({R, K}, seed), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(gpu_values({G, N, K}, seed + 1));
  const Tensor<std::int64_t> offsets = on_gpu(offsets_of<std::int64_t>(sizes));
  std::vector<float> out[2];
  std::vector<std::uint16_t> bf_out[2];
  for (int on = 0; on < 2; ++on) {
    const ScopedEnv env(setting, on ? "on" : "off");
    Tensor<float> d = full<float>({R, N}, std::numeric_limits<float>::quiet_NaN(), gpu);
    KernelTrace trace;
    fp8::grouped_gemm_out(d, a, b, offsets, {.kernel = GroupedGemmKernel::hopper});
    EXPECT_EQ(trace.launches(), std::vector<std::string>{variant(on != 0)});
    out[on] = d.to_vector();
    Tensor<bf16> d_bf = full<bf16>({R, N}, bf16(std::numeric_limits<float>::quiet_NaN()), gpu);
    fp8::grouped_gemm_out(d_bf, a, b, offsets, {.kernel = GroupedGemmKernel::hopper});
    for (const bf16& v : d_bf.to_vector()) bf_out[on].push_back(v.bits);
  }
  ASSERT_EQ(out[0].size(), out[1].size());
  EXPECT_EQ(std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)), 0)
      << "FP32 outputs differ with " << setting << " on and off";
  EXPECT_TRUE(bf_out[0] == bf_out[1]) << "bf16 outputs differ with " << setting << " on and off";
  std::vector<std::int64_t> rows;
  std::vector<int> groups;
  std::int64_t start = 0;
  for (std::size_t g = 0; g < sizes.size(); start += sizes[g], ++g)
    pick_rows(start, sizes[g], static_cast<int>(g), extra, rows, groups);
  std::vector<double> got;
  for (std::int64_t r : rows)
    for (std::int64_t c = 0; c < N; ++c)
      got.push_back(static_cast<double>(out[1][static_cast<std::size_t>(r * N + c)]));
  EXPECT_LE(relative_error(got, dequantized_product(a, b, rows, groups)),
            grouped_tolerance(GroupedGemmKernel::hopper, false));
}

}  // namespace

// The consumers' turns (KILN_FP8_PINGPONG) change only the timing: the same bits either way.
TEST(GroupedFp8GemmCuda, TurnsGiveTheSameBits) {
  KILN_REQUIRE_GPU();
  expect_grouped_setting_keeps_bits("KILN_FP8_PINGPONG", {0, 1, 511, 1000, 129, 77, 300}, 4, 41,
                                    [](bool) { return std::string("grouped_fp8_gemm/hopper"); });
}

// Groups averaging at least 1024 rows run their row tiles in pairs in 2-CTA clusters sharing the
// weight tile (KILN_FP8_MULTICAST=on): each tile's sums are unchanged, so the bits must equal one
// CTA a tile's. Sizes with an odd number of row tiles (1300: 11, 129: 2, 1: 1 — a pair whose second
// CTA has no rows of the group, its A tile the next group's), an empty group, and enough pairs (75
// × 7 column tiles) that each cluster runs several.
TEST(GroupedFp8GemmCuda, MulticastGivesTheSameBits) {
  KILN_REQUIRE_GPU();
  if (!gpu_is_hopper()) GTEST_SKIP() << "the multicast kernel is the Hopper kernel's";
  expect_grouped_setting_keeps_bits("KILN_FP8_MULTICAST", {0, 1300, 2049, 1, 128, 2500, 129, 3000}, 6, 51,
                                    [](bool on) {
                                      return std::string(on ? "grouped_fp8_gemm/hopper_multicast"
                                                            : "grouped_fp8_gemm/hopper");
                                    });
}

TEST(GroupedFp8GemmCuda, Masked) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  struct Case {
    std::int64_t g, m_max, n, k;
    std::vector<std::int32_t> counts;
  };
  std::uint64_t seed = 31;
  for (const Case& c : std::vector<Case>{{6, 192, 256, 512, {0, 1, 192, 100, 129, 64}},
                                         {8, 256, 4096, 7168, {0, 256, 17, 200, 1, 129, 128, 250}}}) {
    const fp8::QuantizedMatrix a = fp8::quantize(gpu_values({c.g * c.m_max, c.k}, seed++), fp8::Tiling::row_1x128);
    const fp8::GroupedWeights b = fp8::quantize_grouped(gpu_values({c.g, c.n, c.k}, seed++));
    const Tensor<std::int32_t> counts = on_gpu(Tensor<std::int32_t>::from_vector(c.counts, {c.g}));
    std::vector<std::int64_t> rows;
    std::vector<int> groups;
    for (std::int64_t g = 0; g < c.g; ++g)
      pick_rows(g * c.m_max, c.counts[static_cast<std::size_t>(g)], static_cast<int>(g), c.n > 1024 ? 6 : 1 << 20,
                rows, groups);
    const std::vector<double> ref = dequantized_product(a, b, rows, groups);
    for (GroupedGemmKernel kernel : {GroupedGemmKernel::hopper, GroupedGemmKernel::simt}) {
      SCOPED_TRACE(str("masked G ", c.g, " M_max ", c.m_max, " N ", c.n, " K ", c.k, " ", kernel_name(kernel)));
      Tensor<float> d = full<float>({c.g, c.m_max, c.n}, std::numeric_limits<float>::quiet_NaN(), gpu);
      fp8::grouped_gemm_masked_out(d, a, b, counts, {.kernel = kernel});
      const std::vector<float> dv = on_cpu(d).to_vector();
      EXPECT_LE(relative_error(rows_of(d, rows), ref), grouped_tolerance(kernel, false));
      // Rows past a count keep their NaN: nothing was written there.
      std::int64_t written = 0;
      for (std::int64_t g = 0; g < c.g; ++g)
        for (std::int64_t i = c.counts[static_cast<std::size_t>(g)]; i < c.m_max; ++i)
          for (std::int64_t j = 0; j < c.n; ++j)
            written += !std::isnan(dv[static_cast<std::size_t>((g * c.m_max + i) * c.n + j)]);
      EXPECT_EQ(written, 0) << "elements written past the counts";
    }
    // The allocating form zeroes those rows.
    const Tensor<bf16> z = fp8::grouped_gemm_masked<bf16>(a, b, counts);
    const std::vector<bf16> zv = on_cpu(z).to_vector();
    EXPECT_EQ(static_cast<float>(zv[static_cast<std::size_t>((0 * c.m_max + 0) * c.n)]), 0.0f);
  }
}

namespace {

// quantize_grouped(_transposed) of w on the GPU (with KILN_FP8_ONE_READ on, the default, one
// batched launch for a contiguous w; off, or for a view, one launch per group), and both from
// quantize_grouped_with_transposed, against the CPU's, bit for bit.
template <class T>
void expect_grouped_quantization_on_cpu(const Tensor<T>& w, const std::string& what) {
  for (const char* one_read : {"on", "off"}) {  // KILN_FP8_ONE_READ: the batched launch, or G launches
    const ScopedEnv setting("KILN_FP8_ONE_READ", one_read);
    for (bool transposed : {false, true}) {
      SCOPED_TRACE(str(what, " ", dtype_of<T>, " ", w.shape(), transposed ? " transposed" : " plain",
                       ", one read ", one_read));
      const fp8::GroupedWeights g = transposed ? fp8::quantize_grouped_transposed(w) : fp8::quantize_grouped(w);
      const fp8::GroupedWeights c =
          transposed ? fp8::quantize_grouped_transposed(on_cpu(w)) : fp8::quantize_grouped(on_cpu(w));
      ASSERT_EQ(g.data.device(), gpu);
      std::vector<std::uint8_t> gb, cb;
      for (const fp8_e4m3& v : on_cpu(g.data).to_vector()) gb.push_back(v.bits);
      for (const fp8_e4m3& v : c.data.to_vector()) cb.push_back(v.bits);
      EXPECT_EQ(gb, cb);
      EXPECT_EQ(on_cpu(g.scale).to_vector(), c.scale.to_vector());
      // The same from the one read that writes both layouts.
      const fp8::GroupedWeightsPair both = fp8::quantize_grouped_with_transposed(w);
      const fp8::GroupedWeights& h = transposed ? both.transposed : both.plain;
      std::vector<std::uint8_t> hb;
      for (const fp8_e4m3& v : on_cpu(h.data).to_vector()) hb.push_back(v.bits);
      EXPECT_EQ(hb, cb) << "with transposed";
      EXPECT_EQ(on_cpu(h.scale).to_vector(), c.scale.to_vector()) << "with transposed";
    }
  }
}

}  // namespace

TEST(GroupedFp8GemmCuda, QuantizeGroupedBitIdenticalToCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  std::uint64_t seed = 41;
  // Partial blocks both ways, rows too short for 16-byte loads (333, 9), and the big config's experts.
  for (const Shape& s : std::vector<Shape>{{5, 200, 333}, {1, 7, 9}, {3, 130, 136}, {8, 1024, 768}, {8, 768, 512}}) {
    const Tensor<float> w = gpu_values(s, seed++);
    expect_grouped_quantization_on_cpu(w, "contiguous");
    expect_grouped_quantization_on_cpu(on_gpu(cast<bf16>(on_cpu(w))), "contiguous");
    if (s[2] > 2) expect_grouped_quantization_on_cpu(narrow(w, 2, 1, s[2] - 2), "view");
  }
}

TEST(GroupedFp8GemmCuda, KernelSelection) {
  KILN_REQUIRE_GPU();
  // N and K not multiples of 16: the automatic choice runs the plain kernel; asking for the Hopper
  // kernel is an error naming what it needs.
  const std::vector<std::int64_t> sizes{3, 0, 140};
  const fp8::QuantizedMatrix a = fp8::quantize(gpu_values({143, 300}, 51), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(gpu_values({3, 200, 300}, 52));
  expect_contiguous(a, b, offsets_of<std::int64_t>(sizes), 1 << 20, "odd N, K", {GroupedGemmKernel::simt});
  KernelTrace trace;
  (void)fp8::grouped_gemm<float>(a, b, on_gpu(offsets_of<std::int64_t>(sizes)));
  EXPECT_EQ(trace.launches(), std::vector<std::string>{"grouped_fp8_gemm/simt"});
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, b, on_gpu(offsets_of<std::int64_t>(sizes)),
                                             {.kernel = GroupedGemmKernel::hopper}),
                    "grouped_fp8_gemm", "N and K multiples of 16", "N=200", "K=300");
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, b, offsets_of<std::int64_t>(sizes)), "fp8_grouped_gemm",
                    "all must be on one device");
}
