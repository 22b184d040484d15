// CPU reference of the Mixture-of-Experts kernels (kernels/moe/: routing, layout, dispatch and
// combine, the balance update; front-end ops/moe.hpp). Plain loops in the compute type, in a fixed
// order; the GPU tests compare the kernels with these, and ops/moe.hpp runs them on CPU tensors.
// The formulas are stated in kernels/moe/args.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kiln/core/low_precision.hpp"
#include "kiln/math/unary.hpp"

namespace kiln::cpu {

// The routes of N tokens as dense rows [N, U] (U >= E): gates [N, K] at experts [N, K], 0 at the
// other experts, 1 at units E..U−1 (kernels/moe/args.hpp MoeRouteArgs::dense).
template <class T>
void moe_dense_gates(const std::int64_t* experts, const T* gates, T* dense, std::int64_t tokens, int E, int K,
                     int U) {
  for (std::int64_t n = 0; n < tokens; ++n) {
    T* row = dense + n * U;
    for (int u = 0; u < U; ++u) row[u] = T(u < E ? 0.0 : 1.0);
    for (int k = 0; k < K; ++k) row[experts[n * K + k]] = gates[n * K + k];
  }
}

// Routing of `tokens` tokens: experts [N, K] and gates [N, K] from scores [N, E] and bias [E].
// logits: scores hold the router's logits, the affinities s = T(sigmoid(logit)) formed here.
template <class T>
void moe_route(const T* scores, const T* bias, std::int64_t* experts, T* gates, std::int64_t tokens, int E, int K,
               int n_group, int topk_group, bool normalize, double scaling, bool logits = false) {
  using C = compute_t<T>;
  const C nan = std::numeric_limits<C>::quiet_NaN(), inf = std::numeric_limits<C>::infinity();
  std::vector<C> c(static_cast<std::size_t>(E)), group(static_cast<std::size_t>(n_group));
  // The best of v[0, n): larger first, then the lower index; NaN (taken) never wins; n if none.
  auto best = [](const std::vector<C>& v, int n) {
    C b = -std::numeric_limits<C>::infinity();
    int at = n;
    for (int i = 0; i < n; ++i)
      if (v[static_cast<std::size_t>(i)] > b || (v[static_cast<std::size_t>(i)] == b && i < at)) {
        b = v[static_cast<std::size_t>(i)];
        at = i;
      }
    return at;
  };
  std::vector<T> affinity(logits ? static_cast<std::size_t>(E) : 0);
  for (std::int64_t n = 0; n < tokens; ++n) {
    const T* s = logits ? affinity.data() : scores + n * E;
    if (logits)
      for (int e = 0; e < E; ++e)
        affinity[static_cast<std::size_t>(e)] = T(math::sigmoid_of(static_cast<C>(scores[n * E + e])));
    for (int e = 0; e < E; ++e)
      c[static_cast<std::size_t>(e)] = static_cast<C>(T(static_cast<C>(s[e]) + static_cast<C>(bias[e])));
    if (topk_group < n_group) {
      const int per_group = E / n_group;
      for (int g = 0; g < n_group; ++g) {
        C top1 = -inf, top2 = -inf;
        for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
          const C v = c[static_cast<std::size_t>(e)];
          if (v > top1) {
            top2 = top1;
            top1 = v;
          } else if (v > top2) {
            top2 = v;
          }
        }
        group[static_cast<std::size_t>(g)] = per_group == 1 ? top1 : static_cast<C>(T(top1 + top2));
      }
      for (int pick = 0; pick < topk_group; ++pick) {
        const int g = best(group, n_group);
        if (g < n_group) group[static_cast<std::size_t>(g)] = nan;
      }
      for (int e = 0; e < E; ++e)
        if (!std::isnan(group[static_cast<std::size_t>(e / per_group)])) c[static_cast<std::size_t>(e)] = -inf;
    }
    C total = 0;
    for (int k = 0; k < K; ++k) {
      int e = best(c, E);
      if (e >= E) e = E - 1;
      c[static_cast<std::size_t>(e)] = nan;
      experts[n * K + k] = e;
      total += static_cast<C>(s[e]);
    }
    for (int k = 0; k < K; ++k) {
      const C sk = static_cast<C>(s[experts[n * K + k]]);
      const C gate = normalize && K > 1 ? sk / (total + C(1e-20)) : sk;
      gates[n * K + k] = T(gate * static_cast<C>(scaling));
    }
  }
}

// dscores [N, E] (zero off the chosen experts) from dgates [N, K].
template <class T>
void moe_route_backward(const T* dgates, const T* scores, const std::int64_t* experts, T* dscores, std::int64_t tokens,
                        int E, int K, bool normalize, double scaling) {
  using C = compute_t<T>;
  const C scale = static_cast<C>(scaling);
  for (std::int64_t n = 0; n < tokens; ++n) {
    T* ds = dscores + n * E;
    for (int e = 0; e < E; ++e) ds[e] = T(C(0));
    C total = 0, dot = 0;
    for (int k = 0; k < K; ++k) {
      const C sk = static_cast<C>(scores[n * E + experts[n * K + k]]), dg = static_cast<C>(dgates[n * K + k]);
      total += sk;
      dot += dg * sk;
    }
    total += C(1e-20);
    for (int k = 0; k < K; ++k) {
      const C dg = static_cast<C>(dgates[n * K + k]);
      ds[experts[n * K + k]] = T(normalize && K > 1 ? scale / total * (dg - dot / total) : scale * dg);
    }
  }
}

// The routes sorted by expert, stably (a counting sort); experts are clamped to [0, E − 1]; the
// counts are also added to `accumulate` when it is not null.
inline void moe_layout(const std::int64_t* experts, std::int64_t routes, int E, std::int64_t* slot_of_row,
                       std::int64_t* row_of_slot, std::int64_t* offsets, std::int64_t* counts,
                       std::int64_t* accumulate = nullptr) {
  auto clamp = [E](std::int64_t e) { return e < 0 ? 0 : (e >= E ? E - 1 : e); };
  for (int e = 0; e < E; ++e) counts[e] = 0;
  for (std::int64_t s = 0; s < routes; ++s) ++counts[clamp(experts[s])];
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<std::int64_t> next(offsets, offsets + E);
  for (std::int64_t s = 0; s < routes; ++s) {
    const std::int64_t p = next[static_cast<std::size_t>(clamp(experts[s]))]++;
    slot_of_row[p] = s;
    row_of_slot[s] = p;
  }
  if (accumulate)
    for (int e = 0; e < E; ++e) accumulate[e] += counts[e];
}

// out[p] = x[index[p] / divisor] · (scale ? scale[index[p]] : 1).
template <class T>
void moe_gather_rows(const T* x, const std::int64_t* index, const T* scale, T* out, std::int64_t rows,
                     std::int64_t cols, std::int64_t divisor) {
  using C = compute_t<T>;
  for (std::int64_t p = 0; p < rows; ++p) {
    const T* src = x + (index[p] / divisor) * cols;
    T* dst = out + p * cols;
    if (scale) {
      const C w = static_cast<C>(scale[index[p]]);
      for (std::int64_t j = 0; j < cols; ++j) dst[j] = T(static_cast<C>(src[j]) * w);
    } else {
      for (std::int64_t j = 0; j < cols; ++j) dst[j] = src[j];
    }
  }
}

// y[n] = Σ_k (weights ? weights[n·K + k] : 1) · in[index[n·K + k]], in k order, from add[n] when
// add is not null (else from 0).
template <class T>
void moe_sum_rows(const T* in, const std::int64_t* index, const T* weights, T* y, std::int64_t tokens,
                  std::int64_t cols, int K, const T* add = nullptr) {
  using C = compute_t<T>;
  std::vector<C> acc(static_cast<std::size_t>(cols));
  for (std::int64_t n = 0; n < tokens; ++n) {
    for (std::int64_t j = 0; j < cols; ++j)  // the sum starts from `add` (a gradient folded in) or 0
      acc[static_cast<std::size_t>(j)] = add ? static_cast<C>(add[n * cols + j]) : C(0);
    for (int k = 0; k < K; ++k) {
      const std::int64_t s = n * K + k;
      const C w = weights ? static_cast<C>(weights[s]) : C(1);
      const T* row = in + index[s] * cols;
      for (std::int64_t j = 0; j < cols; ++j) acc[static_cast<std::size_t>(j)] += w * static_cast<C>(row[j]);
    }
    for (std::int64_t j = 0; j < cols; ++j) y[n * cols + j] = T(acc[static_cast<std::size_t>(j)]);
  }
}

// dgates[s] = <in[index[s]], dy[s / K]>.
template <class T>
void moe_gate_grad(const T* in, const T* dy, const std::int64_t* index, T* dgates, std::int64_t tokens,
                   std::int64_t cols, int K) {
  using C = compute_t<T>;
  for (std::int64_t s = 0; s < tokens * K; ++s) {
    const T* row = in + index[s] * cols;
    const T* g = dy + (s / K) * cols;
    C acc = 0;
    for (std::int64_t j = 0; j < cols; ++j) acc += static_cast<C>(row[j]) * static_cast<C>(g[j]);
    dgates[s] = T(acc);
  }
}

// bias_e += γ·sign(mean − counts_e) in double, rounded once (nothing when no route was counted).
template <class T>
void moe_balance_update(T* bias, const std::int64_t* counts, int E, double gamma) {
  std::int64_t total = 0;
  for (int e = 0; e < E; ++e) total += counts[e];
  if (total == 0 || gamma == 0.0) return;
  const double mean = static_cast<double>(total) / static_cast<double>(E);
  for (int e = 0; e < E; ++e) {
    const double c = static_cast<double>(counts[e]);
    const double sign = c < mean ? 1.0 : (c > mean ? -1.0 : 0.0);
    bias[e] = T(static_cast<double>(bias[e]) + gamma * sign);
  }
}

}  // namespace kiln::cpu
