// CPU reference of token sampling (front-end ops/sampling.hpp, CUDA kernel kernels/sampling/).
// Written for clarity, not speed: per row it sorts, finds the top-k and top-p thresholds exactly
// as the definitions in ops/sampling.hpp say, and draws by Gumbel-max in double precision. The
// CUDA kernel finds the same thresholds by bisection in float; the two agree wherever the
// decision is not within rounding of a boundary.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/math/sampling.hpp"

namespace kiln::cpu {

struct SamplingRow {
  double temperature = 1.0;  // 0: greedy
  std::int64_t top_k = 0;    // 0: off
  double top_p = 1.0;        // 1: off
  std::uint64_t seed = 0;
};

// The token drawn from one row z[0..V) of logits (NaN counts as -inf).
template <class T>
std::int64_t sample_row(const T* z, std::int64_t V, const SamplingRow& o, std::uint64_t sample_id,
                        std::int64_t position) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto logit = [&](std::int64_t i) {
    const double v = static_cast<double>(z[i]);
    return std::isnan(v) ? neg_inf : v;
  };
  if (o.temperature == 0.0) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < V; ++i)
      if (logit(i) > logit(best)) best = i;
    return best;
  }
  std::vector<double> y(static_cast<std::size_t>(V));
  for (std::int64_t i = 0; i < V; ++i) y[static_cast<std::size_t>(i)] = logit(i) / o.temperature;
  std::vector<double> sorted = y;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  // top-k: keep y_i >= the k-th largest value (ties at the threshold are all kept).
  double threshold = neg_inf;
  if (o.top_k > 0 && o.top_k < V) threshold = sorted[static_cast<std::size_t>(o.top_k - 1)];
  // top-p: among the kept, the largest value v whose kept mass at or above v reaches top_p.
  if (o.top_p < 1.0) {
    const double m = sorted[0];
    double total = 0.0;
    for (double v : sorted)
      if (v >= threshold) total += std::exp(v - m);
    double mass = 0.0;
    for (std::size_t j = 0; j < sorted.size() && sorted[j] >= threshold; ++j) {
      mass += std::exp(sorted[j] - m);
      // All entries equal to sorted[j] are counted before deciding (ties are kept together).
      if (j + 1 < sorted.size() && sorted[j + 1] == sorted[j]) continue;
      if (mass >= o.top_p * total) {
        threshold = sorted[j];
        break;
      }
    }
  }
  std::int64_t best = -1;
  double best_score = neg_inf;
  for (std::int64_t i = 0; i < V; ++i) {
    const double yi = y[static_cast<std::size_t>(i)];
    if (yi < threshold || yi == neg_inf) continue;
    const double u = math::sampling_uniform(o.seed, sample_id, position, i);
    const double score = yi - std::log(-std::log(u));
    if (best < 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best < 0 ? 0 : best;  // a row of -inf / NaN only: token 0
}

// tokens[r] for each row r of logits [rows, V] (contiguous).
template <class T>
void sample_tokens(const T* logits, std::int64_t rows, std::int64_t V, const SamplingRow& o,
                   const std::int64_t* sample_ids, const std::int64_t* positions, std::int64_t* tokens) {
  parallel_for(rows, V * 8, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r)
      tokens[r] = sample_row(logits + r * V, V, o, static_cast<std::uint64_t>(sample_ids[r]), positions[r]);
  });
}

}  // namespace kiln::cpu
