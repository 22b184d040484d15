// What the decode benchmarks (bench_decode_cuda.cpp, bench_paged_decode_cuda.cpp) share: the MLA
// decode shape of kiln's "big" config (one kv head whose cache row is [latent 256 | rope key 32],
// the values the latent itself), the composed peer (the same function through kiln ops) and the
// relative Frobenius difference printed under each row.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <kiln/kiln.hpp>

namespace kiln::bench::mla_decode {

constexpr std::int64_t kLatent = 256, kRope = 32, kDk = kLatent + kRope, kDv = kLatent;
inline const double kScale = 1.0 / std::sqrt(64.0 + 32.0);  // 1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)

// The composed peer: q [rows, heads, dk] against the first L cached tokens of each row's slot of a
// contiguous cache [slots, capacity, 1, dk] through kiln ops (index_select of the rows' slots,
// matmul, softmax, matmul with V the first dv columns of K), every row at length L.
inline Tensor<bf16> composed_attention(const Tensor<bf16>& q, const Tensor<bf16>& k_cache,
                                       const Tensor<std::int64_t>& slots, std::int64_t L) {
  const Tensor<bf16> k = squeeze(index_select(narrow(k_cache, 1, 0, L), 0, slots), 2);  // [rows, L, dk]
  const Tensor<bf16> p = softmax(mul(matmul(q, transpose(k, 1, 2)), kScale), -1);      // [rows, heads, L]
  return matmul(p, narrow(k, 2, 0, kDv));                                               // [rows, heads, dv]
}

// ||a − b|| / ||b|| (Frobenius; ||a − b|| where b is 0).
inline double relative_difference(const Tensor<bf16>& a, const Tensor<bf16>& b) {
  const std::vector<bf16> x = a.to_vector(), y = b.to_vector();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double u = static_cast<double>(static_cast<float>(x[i])), v = static_cast<double>(static_cast<float>(y[i]));
    num += (u - v) * (u - v);
    den += v * v;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace kiln::bench::mla_decode
