// kiln::fp8 grouped GEMM on the CPU (ops/grouped_fp8_gemm.hpp, backend/cpu/grouped_fp8_gemm.hpp):
// the contiguous and masked products against the float64 product of the dequantized operands,
// group by group, with odd group sizes, empty groups, one group; the grouped weight quantization
// (plain and transposed) bit for bit against the dense one per group; the dgrad layout; int32 and
// int64 indices; bf16 outputs; errors.
#include <kiln/ops/grouped_fp8_gemm.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "grouped_fp8_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

std::vector<std::uint8_t> bytes(const Tensor<fp8_e4m3>& t) {
  std::vector<std::uint8_t> out;
  for (const fp8_e4m3& v : t.to_vector()) out.push_back(v.bits);
  return out;
}

// D (float) of the contiguous product against the dequantized float64 product, all rows.
template <class Index>
void expect_matches_dequantized(const Tensor<float>& d, const fp8::QuantizedMatrix& a, const fp8::GroupedWeights& b,
                                const Tensor<Index>& offsets) {
  std::vector<std::int64_t> rows;
  std::vector<int> groups;
  rows_of_groups(offsets, rows, groups);
  ASSERT_EQ(static_cast<std::int64_t>(rows.size()), d.size(0));
  const std::vector<double> ref = dequantized_product(a, b, rows, groups);
  // FP32 block sums and promotion against float64 of the float-rounded dequantized values.
  EXPECT_LE(relative_error(d.to_vector(), ref), 1e-5);
  // kiln's float64 reference of the quantized operands agrees to the dequantization's rounding.
  EXPECT_LE(relative_error(fp8::grouped_gemm_reference(a, b, offsets).to_vector(), ref), 1e-6);
}

}  // namespace

TEST(GroupedFp8Gemm, ContiguousOddGroupsMatchDequantizedFloat64) {
  const std::vector<std::int64_t> sizes{0, 1, 130, 7, 0, 257, 64};
  std::int64_t R = 0;
  for (std::int64_t s : sizes) R += s;
  const std::int64_t G = static_cast<std::int64_t>(sizes.size()), N = 200, K = 300;
  const fp8::QuantizedMatrix a = fp8::quantize(varied_randn({R, K}, 1), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(varied_randn({G, N, K}, 2));
  const Tensor<std::int64_t> offsets = offsets_of(sizes);
  const Tensor<float> d = fp8::grouped_gemm<float>(a, b, offsets);
  ASSERT_EQ(d.shape(), (Shape{R, N}));
  expect_matches_dequantized(d, a, b, offsets);
  // int32 offsets and a bf16 output: the same FP32 accumulators, rounded once.
  const Tensor<bf16> d16 = fp8::grouped_gemm<bf16>(a, b, offsets_of<std::int32_t>(sizes));
  EXPECT_EQ(d16.to_vector(), cast<bf16>(d).to_vector());
}

TEST(GroupedFp8Gemm, OneGroupIsTheDenseGemm) {
  const std::int64_t R = 77, N = 144, K = 260;
  const Tensor<float> w = varied_randn({1, N, K}, 3);
  const fp8::QuantizedMatrix a = fp8::quantize(varied_randn({R, K}, 4), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(w);
  const fp8::QuantizedMatrix dense_b = fp8::quantize(reshape(w, {N, K}), fp8::Tiling::block_128x128);
  EXPECT_EQ(bytes(b.data), bytes(dense_b.data));
  EXPECT_EQ(b.scale.to_vector(), dense_b.scale.to_vector());
  const Tensor<float> d = fp8::grouped_gemm<float>(a, b, offsets_of({R}));
  EXPECT_EQ(d.to_vector(), fp8::gemm<float>(a, dense_b).to_vector());
}

TEST(GroupedFp8Gemm, QuantizeGroupedIsTheDenseQuantizationPerGroup) {
  const std::int64_t G = 3, N = 130, K = 257;
  const Tensor<float> w = varied_randn({G, N, K}, 5);
  for (bool transposed : {false, true})
    for (bool bf : {false, true}) {
      SCOPED_TRACE(str(transposed ? "transposed" : "plain", bf ? " bf16" : " float"));
      const fp8::GroupedWeights q = bf ? (transposed ? fp8::quantize_grouped_transposed(cast<bf16>(w))
                                                     : fp8::quantize_grouped(cast<bf16>(w)))
                                       : (transposed ? fp8::quantize_grouped_transposed(w) : fp8::quantize_grouped(w));
      ASSERT_EQ(q.data.shape(), transposed ? (Shape{G, K, N}) : (Shape{G, N, K}));
      for (std::int64_t g = 0; g < G; ++g) {
        const Tensor<float> wg = squeeze(narrow(w, 0, g, 1), 0);
        const fp8::QuantizedMatrix dense =
            bf ? (transposed ? fp8::quantize_transposed(cast<bf16>(wg), fp8::Tiling::block_128x128)
                             : fp8::quantize(cast<bf16>(wg), fp8::Tiling::block_128x128))
               : (transposed ? fp8::quantize_transposed(wg, fp8::Tiling::block_128x128)
                             : fp8::quantize(wg, fp8::Tiling::block_128x128));
        EXPECT_EQ(bytes(squeeze(narrow(q.data, 0, g, 1), 0)), bytes(dense.data));
        EXPECT_EQ(squeeze(narrow(q.scale, 0, g, 1), 0).to_vector(), dense.scale.to_vector());
      }
    }
}

TEST(GroupedFp8Gemm, DgradThroughTransposedWeights) {
  // dX_g = dY_g · W_g with A = quantized dY [R, N] and B = W_gᵀ by blocks: against float64 of the
  // dequantized operands, and the transposed weights dequantize to W_gᵀ of the plain ones exactly.
  const std::vector<std::int64_t> sizes{33, 0, 200, 1};
  const std::int64_t R = 234, G = 4, N = 192, K = 160;
  const Tensor<float> w = varied_randn({G, N, K}, 6);
  const fp8::GroupedWeights bt = fp8::quantize_grouped_transposed(w);
  EXPECT_EQ(fp8::dequantize(bt).to_vector(), contiguous(transpose(fp8::dequantize(fp8::quantize_grouped(w)), 1, 2)).to_vector());
  const fp8::QuantizedMatrix dy = fp8::quantize(varied_randn({R, N}, 7), fp8::Tiling::row_1x128);
  const Tensor<std::int64_t> offsets = offsets_of(sizes);
  const Tensor<float> dx = fp8::grouped_gemm<float>(dy, bt, offsets);
  ASSERT_EQ(dx.shape(), (Shape{R, K}));
  expect_matches_dequantized(dx, dy, bt, offsets);
}

TEST(GroupedFp8Gemm, MaskedWritesOnlyCountedRows) {
  const std::int64_t G = 4, M = 50, N = 96, K = 200;
  const std::vector<std::int32_t> counts{0, 50, 1, 33};
  const fp8::QuantizedMatrix a = fp8::quantize(varied_randn({G * M, K}, 8), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(varied_randn({G, N, K}, 9));
  const Tensor<std::int32_t> c = Tensor<std::int32_t>::from_vector(counts, {G});
  const Tensor<float> d = fp8::grouped_gemm_masked<float>(a, b, c);
  ASSERT_EQ(d.shape(), (Shape{G, M, N}));
  std::vector<std::int64_t> rows;
  std::vector<int> groups;
  std::vector<float> got;
  const std::vector<float> dv = d.to_vector();
  for (std::int64_t g = 0; g < G; ++g)
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t n = 0; n < N; ++n) {
        const float v = dv[static_cast<std::size_t>((g * M + i) * N + n)];
        if (i < counts[static_cast<std::size_t>(g)]) {
          if (n == 0) {
            rows.push_back(g * M + i);
            groups.push_back(static_cast<int>(g));
          }
          got.push_back(v);
        } else {
          EXPECT_EQ(v, 0.0f) << "slot " << g << " row " << i << " past its count";
        }
      }
  EXPECT_LE(relative_error(got, dequantized_product(a, b, rows, groups)), 1e-5);
  // The _out form leaves rows past a count as they were.
  Tensor<float> out = full<float>({G, M, N}, 7.0f);
  fp8::grouped_gemm_masked_out(out, a, b, to(c, Device::cpu()));
  const std::vector<float> ov = out.to_vector();
  for (std::int64_t g = 0; g < G; ++g)
    for (std::int64_t i = 0; i < M; ++i) {
      const std::size_t at = static_cast<std::size_t>((g * M + i) * N);
      EXPECT_EQ(ov[at], i < counts[static_cast<std::size_t>(g)] ? dv[at] : 7.0f) << "slot " << g << " row " << i;
    }
  // The masked reference (float64 of the quantized operands) agrees with the contiguous one.
  const Tensor<double> ref = fp8::grouped_gemm_reference(a, b, c, /*masked=*/true);
  EXPECT_LE(relative_error(d.to_vector(), ref.to_vector()), 1e-5);
}

TEST(GroupedFp8Gemm, Errors) {
  const std::int64_t R = 20, G = 3, N = 32, K = 64;
  const fp8::QuantizedMatrix a = fp8::quantize(varied_randn({R, K}, 10), fp8::Tiling::row_1x128);
  const fp8::GroupedWeights b = fp8::quantize_grouped(varied_randn({G, N, K}, 11));
  const Tensor<std::int64_t> good = offsets_of({5, 5, 10});
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, b, offsets_of({5, 15})), "fp8_grouped_gemm", "offsets must be [4]",
                    "3 groups");
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, b, offsets_of({5, 5, 9})), "fp8_grouped_gemm", "from 0 to R = 20");
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, b, Tensor<std::int64_t>::from_vector({0, 9, 5, 20}, {4})),
                    "fp8_grouped_gemm", "must not decrease");
  const fp8::QuantizedMatrix blocks = fp8::quantize(varied_randn({R, K}, 12), fp8::Tiling::block_128x128);
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(blocks, b, good), "fp8_grouped_gemm", "A must have 1x128 tiles");
  const fp8::QuantizedMatrix other_k = fp8::quantize(varied_randn({R, 48}, 13), fp8::Tiling::row_1x128);
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(other_k, b, good), "fp8_grouped_gemm", "differ in K", "[20, 48]",
                    "[3, 32, 64]");
  fp8::GroupedWeights bad_scale = b;
  bad_scale.scale = zeros<float>({G, 2, 1});
  EXPECT_KILN_ERROR(fp8::grouped_gemm<float>(a, bad_scale, good), "fp8_grouped_gemm", "block scales of shape [3, 1, 1]");
  EXPECT_KILN_ERROR(fp8::grouped_gemm_masked<float>(a, b, Tensor<std::int32_t>::from_vector({1, 2, 3}, {3})),
                    "fp8_grouped_gemm_masked", "[G * M_max, K]");
  const fp8::QuantizedMatrix am = fp8::quantize(varied_randn({G * 4, K}, 14), fp8::Tiling::row_1x128);
  EXPECT_KILN_ERROR(fp8::grouped_gemm_masked<float>(am, b, Tensor<std::int32_t>::from_vector({1, 5, 3}, {3})),
                    "fp8_grouped_gemm_masked", "counts[1] = 5", "M_max = 4");
  EXPECT_KILN_ERROR(fp8::grouped_gemm_masked<float>(am, b, Tensor<std::int32_t>::from_vector({1, 2, 3, 4}, {4})),
                    "counts must be [3]");
  Tensor<float> wrong({R, N + 1});
  EXPECT_KILN_ERROR(fp8::grouped_gemm_out(wrong, a, b, good), "fp8_grouped_gemm", "contiguous tensor of shape [20, 32]");
  EXPECT_KILN_ERROR(fp8::quantize_grouped(zeros<float>({4, 5})), "fp8_quantize_grouped", "[G, N, K]");
}
