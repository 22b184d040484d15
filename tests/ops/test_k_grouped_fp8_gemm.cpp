// kiln::fp8's k-grouped FP8 GEMM on the CPU (ops/k_grouped_fp8_gemm.hpp, math/k_grouped.hpp): the
// experts' weight gradient dW_g = dY_gᵀ · X_g. The layout's bytes and scales bit for bit those of
// quantize_transposed on each group's rows alone, zeros between and after the groups; the product
// against the float64 product of the dequantized per-group operands (an independent reference:
// each group quantized alone, decoded, multiplied in double); one group equal to the dense GEMM bit
// for bit; empty groups, no rows at all, odd sizes on both sides of 128; errors.
#include <kiln/ops/k_grouped_fp8_gemm.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "grouped_fp8_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

std::vector<std::int64_t> starts_of(const std::vector<std::int64_t>& sizes) {
  std::vector<std::int64_t> s{0};
  for (std::int64_t n : sizes) s.push_back(s.back() + n);
  return s;
}

// The layout of x by the given group sizes against quantize_transposed of each group alone.
template <class T>
void expect_layout(const std::vector<std::int64_t>& sizes, std::int64_t C, std::uint64_t seed) {
  SCOPED_TRACE(str(dtype_of<T>, " C ", C, " seed ", seed));
  const std::vector<std::int64_t> start = starts_of(sizes);
  const std::int64_t R = start.back(), G = static_cast<std::int64_t>(sizes.size());
  const Tensor<T> x = cast<T>(varied_randn({std::max<std::int64_t>(R, 1), C}, seed));
  const Tensor<T> rows = narrow(x, 0, 0, R);
  const fp8::QuantizeOptions options{.amax_floor = 1e-30f};
  const fp8::KGroupedMatrix k = fp8::quantize_k_grouped(rows, offsets_of(sizes), options);
  const std::int64_t P = fp8::k_grouped_columns(R, G);
  ASSERT_EQ(k.q.data.shape(), (Shape{C, P}));
  ASSERT_EQ(k.source_rows, R);
  ASSERT_EQ(k.groups(), G);
  const cpu::Fp8Operand o = fp8::detail::cpu_operand(k.q);
  const float zero_scale = fp8::tile_scale(0.0f, options.amax_floor, false);

  std::vector<bool> used(static_cast<std::size_t>(P), false);
  std::int64_t column = 0;
  for (std::int64_t g = 0; g < G; ++g) {
    const std::int64_t n = sizes[static_cast<std::size_t>(g)];
    EXPECT_EQ(column % 128, 0);
    if (n > 0) {
      const fp8::QuantizedMatrix alone =
          fp8::quantize_transposed(narrow(rows, 0, start[static_cast<std::size_t>(g)], n), fp8::Tiling::row_1x128,
                                   options);
      const cpu::Fp8Operand a = fp8::detail::cpu_operand(alone);
      for (std::int64_t c = 0; c < C; ++c) {
        for (std::int64_t t = 0; t < n; ++t) {
          ASSERT_EQ(o.data[c * o.ld + column + t], a.data[c * a.ld + t])
              << "group " << g << " row " << c << " token " << t;
        }
        for (std::int64_t kb = 0; kb < (n + 127) / 128; ++kb) {
          ASSERT_EQ(o.scale_of(c, column / 128 + kb), a.scale_of(c, kb))
              << "group " << g << " row " << c << " kb " << kb;
        }
      }
      for (std::int64_t t = 0; t < n; ++t) used[static_cast<std::size_t>(column + t)] = true;
    }
    column += fp8::k_group_round(n);
  }
  EXPECT_LE(column, P);
  // Padding columns are zero bytes; a tile with no group column has the scale of an all-zero tile.
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t j = 0; j < P; ++j) {
      if (used[static_cast<std::size_t>(j)]) continue;
      ASSERT_EQ(o.data[c * o.ld + j], 0) << "row " << c << " column " << j;
    }
  }
  for (std::int64_t kb = column / 128; kb < P / 128; ++kb)
    for (std::int64_t c = 0; c < C; ++c) ASSERT_EQ(o.scale_of(c, kb), zero_scale) << "tail k-block " << kb;
}

// D_g against the float64 product of the dequantized per-group operands.
template <class Out>
void expect_product(const std::vector<std::int64_t>& sizes, std::int64_t M, std::int64_t N, std::uint64_t seed) {
  SCOPED_TRACE(str(dtype_of<Out>, " M ", M, " N ", N, " seed ", seed));
  const std::vector<std::int64_t> start = starts_of(sizes);
  const std::int64_t R = start.back(), G = static_cast<std::int64_t>(sizes.size());
  const Tensor<float> dy = varied_randn({R, M}, seed), x = varied_randn({R, N}, seed + 1);
  const Tensor<std::int64_t> off = offsets_of(sizes);
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(dy, off), b = fp8::quantize_k_grouped(x, off);
  const Tensor<Out> d = fp8::k_grouped_gemm<Out>(a, b);
  ASSERT_EQ(d.shape(), (Shape{G, M, N}));
  const Tensor<double> kiln_ref = fp8::k_grouped_gemm_reference(a, b);

  std::vector<double> want(static_cast<std::size_t>(G * M * N), 0.0);
  for (std::int64_t g = 0; g < G; ++g) {
    const std::int64_t n = sizes[static_cast<std::size_t>(g)];
    if (n == 0) continue;
    const std::vector<float> da =
        fp8::dequantize(fp8::quantize_transposed(narrow(dy, 0, start[static_cast<std::size_t>(g)], n),
                                                 fp8::Tiling::row_1x128))
            .to_vector();
    const std::vector<float> db =
        fp8::dequantize(fp8::quantize_transposed(narrow(x, 0, start[static_cast<std::size_t>(g)], n),
                                                 fp8::Tiling::row_1x128))
            .to_vector();
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t j = 0; j < N; ++j) {
        double s = 0.0;
        for (std::int64_t t = 0; t < n; ++t)
          s += static_cast<double>(da[static_cast<std::size_t>(i * n + t)]) * db[static_cast<std::size_t>(j * n + t)];
        want[static_cast<std::size_t>((g * M + i) * N + j)] = s;
      }
  }
  const std::vector<double> got = cast<double>(d).to_vector();
  // FP32 block sums and promotion; a bf16 output is the float one rounded once (u = 2^-8).
  const double bound = std::is_same_v<Out, float> ? 1e-5 : std::ldexp(1.0, -8) + 1e-5;
  EXPECT_LE(relative_error(got, want), bound);
  if constexpr (std::is_same_v<Out, bf16>) {
    EXPECT_EQ(d.to_vector(), cast<bf16>(fp8::k_grouped_gemm<float>(a, b)).to_vector());
  }
  EXPECT_LE(relative_error(kiln_ref.to_vector(), want), 1e-6);
  for (std::int64_t g = 0; g < G; ++g) {
    if (sizes[static_cast<std::size_t>(g)] != 0) continue;
    for (std::int64_t e = 0; e < M * N; ++e) {
      ASSERT_EQ(got[static_cast<std::size_t>(g * M * N + e)], 0.0) << "empty group " << g;
    }
  }
}

}  // namespace

TEST(KGroupedFp8Gemm, LayoutIsEachGroupQuantizedAlone) {
  expect_layout<float>({0, 1, 127, 128, 129, 300, 0, 5}, 7, 1);
  expect_layout<float>({3, 0, 200}, 130, 2);
  expect_layout<bf16>({129, 64, 0}, 131, 3);
  expect_layout<float>({0, 0}, 9, 4);  // no rows at all: zeros, all-zero tiles' scales
  expect_layout<bf16>({1}, 1, 5);
}

TEST(KGroupedFp8Gemm, MatchesDequantizedFloat64PerGroup) {
  expect_product<float>({0, 1, 130, 7, 0, 257, 64}, 40, 72, 10);
  expect_product<float>({300}, 129, 3, 11);
  expect_product<bf16>({5, 128, 0, 129}, 33, 130, 12);
}

TEST(KGroupedFp8Gemm, OneGroupIsTheDenseGemm) {
  const std::int64_t R = 301, M = 70, N = 136;
  const Tensor<float> dy = varied_randn({R, M}, 20), x = varied_randn({R, N}, 21);
  const Tensor<std::int64_t> off = offsets_of({R});
  const Tensor<float> d = fp8::k_grouped_gemm<float>(fp8::quantize_k_grouped(dy, off), fp8::quantize_k_grouped(x, off));
  const Tensor<float> dense = fp8::gemm<float>(fp8::quantize_transposed(dy, fp8::Tiling::row_1x128),
                                               fp8::quantize_transposed(x, fp8::Tiling::row_1x128));
  EXPECT_EQ(d.to_vector(), dense.to_vector());
}

TEST(KGroupedFp8Gemm, NoRowsGiveZeros) {
  const Tensor<std::int64_t> off = offsets_of({0, 0, 0});
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(zeros<float>({0, 5}), off);
  const fp8::KGroupedMatrix b = fp8::quantize_k_grouped(zeros<bf16>({0, 4}), off);
  const Tensor<bf16> d = fp8::k_grouped_gemm<bf16>(a, b);
  EXPECT_EQ(d.shape(), (Shape{3, 5, 4}));
  EXPECT_EQ(d.to_vector(), zeros<bf16>({3, 5, 4}).to_vector());
}

TEST(KGroupedFp8Gemm, Errors) {
  const Tensor<float> x = randn<float>({10, 8});
  EXPECT_KILN_ERROR(fp8::quantize_k_grouped(x, offsets_of({4, 5})), "fp8_quantize_k_grouped", "offsets",
                    "10");
  EXPECT_KILN_ERROR(fp8::quantize_k_grouped(x, Tensor<std::int64_t>::from_vector({0, 6, 4, 10}, {4})),
                    "fp8_quantize_k_grouped", "decrease");
  EXPECT_KILN_ERROR(fp8::quantize_k_grouped(x, Tensor<std::int64_t>::from_vector({0}, {1})), "fp8_quantize_k_grouped",
                    "[G + 1]");
  EXPECT_KILN_ERROR(fp8::quantize_k_grouped(randn<float>({10}), offsets_of({10})), "fp8_quantize_k_grouped",
                    "[10]");
  const fp8::KGroupedMatrix a = fp8::quantize_k_grouped(x, offsets_of({4, 6}));
  EXPECT_KILN_ERROR(fp8::k_grouped_gemm<float>(a, fp8::quantize_k_grouped(x, offsets_of({5, 5}))),
                    "fp8_k_grouped_gemm", "different group offsets");
  EXPECT_KILN_ERROR(fp8::k_grouped_gemm<float>(a, fp8::quantize_k_grouped(x, offsets_of({4, 3, 3}))),
                    "fp8_k_grouped_gemm", "same rows");
  EXPECT_KILN_ERROR(
      fp8::k_grouped_gemm<float>(a, fp8::quantize_k_grouped(randn<float>({11, 8}), offsets_of({4, 7}))),
      "fp8_k_grouped_gemm", "same rows");
}
