// CPU reference of fused causal attention (front-end ops/attention.hpp): the function the GPU
// kernels compute, in plain loops with double accumulation, forward and backward.
//
// Layouts (contiguous): q [B, H, S, Dk], k [B, Hkv, S, Dk], v [B, Hkv, S, Dv], out [B, H, S, Dv],
// lse [B, H, S]; query head h reads kv head h / (H / Hkv). Query i attends to keys j with
// key_begin[i] <= j <= i, where key_begin[i] is the first token of i's sequence in a packed row
// (0 for every i when a row holds one sequence: key_begin == nullptr).
//
//   s_ij = scale · q_i·k_j,   lse_i = log Σ_j exp(s_ij),   P_ij = exp(s_ij − lse_i),   o_i = Σ_j P_ij v_j
//
// Backward, from the saved lse (no S×S matrix is kept between the passes), with D_i = dO_i·o_i:
//   dP_ij = dO_i·v_j,   dS_ij = P_ij (dP_ij − D_i),   dq_i = scale Σ_j dS_ij k_j,
//   dk_j = scale Σ_i dS_ij q_i,   dv_j = Σ_i P_ij dO_i
// (D_i = Σ_j P_ij dP_ij, since Σ_j P_ij = 1: the softmax Jacobian applied row by row.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::cpu {

struct AttentionShape {
  std::int64_t batch = 0, seq = 0;
  std::int64_t heads = 1, kv_heads = 1, dk = 0, dv = 0;
};

// out and lse (in L: double from the front-end) from q, k, v.
template <class T, class L>
void attention_forward(T* out, L* lse, const T* q, const T* k, const T* v, const std::int64_t* key_begin,
                       const AttentionShape& s, double scale) {
  const std::int64_t S = s.seq, group = s.heads / s.kv_heads;
  parallel_for(s.batch * s.heads * S, 64 * (s.dk + s.dv) * std::max<std::int64_t>(S / 2, 1),
               [&](std::int64_t begin, std::int64_t end) {
                 std::vector<double> score, acc(static_cast<std::size_t>(s.dv));
                 for (std::int64_t row = begin; row < end; ++row) {
                   const std::int64_t i = row % S, bh = row / S, b = bh / s.heads, h = bh % s.heads;
                   const std::int64_t kvh = h / group, first = key_begin ? key_begin[i] : 0;
                   const T* qi = q + row * s.dk;
                   const T* kb = k + (b * s.kv_heads + kvh) * S * s.dk;
                   const T* vb = v + (b * s.kv_heads + kvh) * S * s.dv;
                   score.assign(static_cast<std::size_t>(i - first + 1), 0.0);
                   double m = -INFINITY;
                   for (std::int64_t j = first; j <= i; ++j) {
                     double dot = 0.0;
                     for (std::int64_t d = 0; d < s.dk; ++d)
                       dot += static_cast<double>(qi[d]) * static_cast<double>(kb[j * s.dk + d]);
                     score[static_cast<std::size_t>(j - first)] = dot * scale;
                     m = std::max(m, dot * scale);
                   }
                   double total = 0.0;
                   for (double& x : score) total += (x = std::exp(x - m));
                   std::fill(acc.begin(), acc.end(), 0.0);
                   for (std::int64_t j = first; j <= i; ++j) {
                     const double p = score[static_cast<std::size_t>(j - first)] / total;
                     for (std::int64_t d = 0; d < s.dv; ++d)
                       acc[static_cast<std::size_t>(d)] += p * static_cast<double>(vb[j * s.dv + d]);
                   }
                   T* o = out + row * s.dv;
                   for (std::int64_t d = 0; d < s.dv; ++d) o[d] = convert<T>(acc[static_cast<std::size_t>(d)]);
                   lse[row] = static_cast<L>(m + std::log(total));
                 }
               });
}

// dq [B, H, S, Dk], dk [B, Hkv, S, Dk], dv [B, Hkv, S, Dv] (overwritten) from the forward's
// inputs, its lse and dout [B, H, S, Dv]. D_i is summed as Σ_j P_ij dP_ij in double (a first pass
// over the keys), not as dO_i·o_i from the rounded output, so the reference is exact to double
// whatever the output type. One task per (batch row, kv head): it owns that head's dk and dv and
// the dq of its query heads, so the sums need no atomics and their order is fixed (the same bits
// for any thread count).
template <class T, class L>
void attention_backward(T* dq, T* dk, T* dv, const T* q, const T* k, const T* v, const L* lse, const T* dout,
                        const std::int64_t* key_begin, const AttentionShape& s, double scale) {
  const std::int64_t S = s.seq, group = s.heads / s.kv_heads;
  parallel_for(s.batch * s.kv_heads, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> dk_acc, dv_acc, dq_acc(static_cast<std::size_t>(s.dk)), p, dp;
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t b = task / s.kv_heads, kvh = task % s.kv_heads;
      const T* kb = k + task * S * s.dk;
      const T* vb = v + task * S * s.dv;
      dk_acc.assign(static_cast<std::size_t>(S * s.dk), 0.0);
      dv_acc.assign(static_cast<std::size_t>(S * s.dv), 0.0);
      for (std::int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const std::int64_t bh = b * s.heads + h;
        for (std::int64_t i = 0; i < S; ++i) {
          const std::int64_t row = bh * S + i, first = key_begin ? key_begin[i] : 0;
          const T* qi = q + row * s.dk;
          const T* doi = dout + row * s.dv;
          p.assign(static_cast<std::size_t>(i - first + 1), 0.0);
          dp.assign(p.size(), 0.0);
          double D = 0.0;
          for (std::int64_t j = first; j <= i; ++j) {
            double dot = 0.0, dpj = 0.0;
            for (std::int64_t d = 0; d < s.dk; ++d)
              dot += static_cast<double>(qi[d]) * static_cast<double>(kb[j * s.dk + d]);
            for (std::int64_t d = 0; d < s.dv; ++d)
              dpj += static_cast<double>(doi[d]) * static_cast<double>(vb[j * s.dv + d]);
            const double pj = std::exp(dot * scale - static_cast<double>(lse[row]));
            p[static_cast<std::size_t>(j - first)] = pj;
            dp[static_cast<std::size_t>(j - first)] = dpj;
            D += pj * dpj;
          }
          std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
          for (std::int64_t j = first; j <= i; ++j) {
            const double pj = p[static_cast<std::size_t>(j - first)];
            const double ds = pj * (dp[static_cast<std::size_t>(j - first)] - D) * scale;
            for (std::int64_t d = 0; d < s.dv; ++d)
              dv_acc[static_cast<std::size_t>(j * s.dv + d)] += pj * static_cast<double>(doi[d]);
            for (std::int64_t d = 0; d < s.dk; ++d) {
              dq_acc[static_cast<std::size_t>(d)] += ds * static_cast<double>(kb[j * s.dk + d]);
              dk_acc[static_cast<std::size_t>(j * s.dk + d)] += ds * static_cast<double>(qi[d]);
            }
          }
          for (std::int64_t d = 0; d < s.dk; ++d) dq[row * s.dk + d] = convert<T>(dq_acc[static_cast<std::size_t>(d)]);
        }
      }
      for (std::int64_t e = 0; e < S * s.dk; ++e) dk[task * S * s.dk + e] = convert<T>(dk_acc[static_cast<std::size_t>(e)]);
      for (std::int64_t e = 0; e < S * s.dv; ++e) dv[task * S * s.dv + e] = convert<T>(dv_acc[static_cast<std::size_t>(e)]);
    }
  });
}

}  // namespace kiln::cpu
