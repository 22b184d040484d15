// Helpers for the grouped FP8 GEMM tests (tests/ops/test_grouped_fp8_gemm.cpp on the CPU,
// tests/kernels/test_grouped_fp8_gemm_cuda.cpp on the GPU): inputs whose magnitudes vary by row and
// by 128-column block (so that the fine-grained scales matter), group offsets from sizes, and the
// float64 product of the dequantized operands for chosen rows (the independent reference: no FP8
// code of kiln's GEMM path is involved beyond fp8::dequantize's decode of the bytes and scales).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <kiln/backend/cpu/parallel.hpp>
#include <kiln/ops/grouped_fp8_gemm.hpp>

#include "test_util.hpp"

namespace kiln::testing {

// A normal sample whose magnitude varies over about 2^±9 by row and by 128-wide column block, with
// rare outliers (×300) and zeros.
inline Tensor<float> varied_randn(const Shape& shape, std::uint64_t seed) {
  Generator gen{seed, 0};
  std::vector<float> v = randn<float>(shape, 0.0, 1.0, Device::cpu(), gen).to_vector();
  const std::vector<float> u = rand<float>(shape, 0.0, 1.0, Device::cpu(), gen).to_vector();
  const std::int64_t cols = shape.back();
  for (std::size_t k = 0; k < v.size(); ++k) {
    const std::int64_t i = static_cast<std::int64_t>(k) / cols, j = static_cast<std::int64_t>(k) % cols;
    v[k] *= std::ldexp(1.0f, static_cast<int>((i * 7 + (j / 128) * 3) % 19) - 9);
    if (u[k] < 0.002f) v[k] *= 300.0f;
    if (u[k] > 0.998f) v[k] = 0.0f;
  }
  return Tensor<float>::from_vector(v, shape);
}

// offsets [G + 1] of groups of the given sizes.
template <class Index = std::int64_t>
Tensor<Index> offsets_of(const std::vector<std::int64_t>& sizes) {
  std::vector<Index> o{0};
  for (std::int64_t s : sizes) o.push_back(static_cast<Index>(o.back() + s));
  return Tensor<Index>::from_vector(o, {static_cast<std::int64_t>(o.size())});
}

// The float64 product of the dequantized operands: out[i · N + n] = Σ_k deq(A)[rows[i], k] ·
// deq(B)[groups[i], n, k]. Operands may live on any device (copied to the host).
inline std::vector<double> dequantized_product(const fp8::QuantizedMatrix& a, const fp8::GroupedWeights& b,
                                               const std::vector<std::int64_t>& rows, const std::vector<int>& groups) {
  const fp8::QuantizedMatrix ha = fp8::detail::to_host(a);
  const cpu::Fp8Operand oa = fp8::detail::cpu_operand(ha);
  const std::vector<float> bd = fp8::dequantize(b).to_vector();
  const auto& value = cpu::e4m3_values();
  const std::int64_t N = b.rows(), K = b.cols();
  const auto R = static_cast<std::int64_t>(rows.size());
  std::vector<double> ad(static_cast<std::size_t>(R * K));
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t r = rows[static_cast<std::size_t>(i)];
      ad[static_cast<std::size_t>(i * K + k)] =
          static_cast<double>(value[oa.data[r * oa.ld + k]] * oa.scale_of(r, k / fp8::tile_size));
    }
  std::vector<double> out(static_cast<std::size_t>(R * N));
  cpu::parallel_for(N, R * K, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t n = begin; n < end; ++n)
      for (std::int64_t i = 0; i < R; ++i) {
        const float* w = bd.data() + (static_cast<std::int64_t>(groups[static_cast<std::size_t>(i)]) * N + n) * K;
        const double* x = ad.data() + i * K;
        double s = 0.0;
        for (std::int64_t k = 0; k < K; ++k) s += x[k] * static_cast<double>(w[k]);
        out[static_cast<std::size_t>(i * N + n)] = s;
      }
  });
  return out;
}

// Every row of every group (contiguous offsets, host copy), with its group.
template <class Index>
void rows_of_groups(const Tensor<Index>& offsets, std::vector<std::int64_t>& rows, std::vector<int>& groups) {
  const std::vector<Index> o = to(offsets, Device::cpu()).to_vector();
  for (std::size_t g = 0; g + 1 < o.size(); ++g)
    for (std::int64_t r = o[g]; r < static_cast<std::int64_t>(o[g + 1]); ++r) {
      rows.push_back(r);
      groups.push_back(static_cast<int>(g));
    }
}

}  // namespace kiln::testing
