// sample_tokens on CUDA (kernels/sampling/) against the CPU reference (backend/cpu/sampling.hpp).
// The kernel works in float and finds the top-k / top-p thresholds by bisection; the reference
// works in double with a sort. They must pick the same token wherever float rounding cannot change
// the choice. A row is skipped (counted, and it must stay rare) only when it can:
//   - greedy: the two largest logits differ but by less than 1e-5 (relative);
//   - top-k: a value other than the k-th largest lies within 1e-5 of it (float may order them
//     differently; exact ties are kept together by both, so they decide nothing);
//   - top-p: the kept set is only known up to the tokens whose cumulative mass lies within 1e-4
//     of the top_p boundary (float sums); the row is decided when the Gumbel winner over the tokens
//     kept for sure is also the winner over every token that may be kept;
//   - the winner's Gumbel score leads the next candidate by less than 1e-4.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <kiln/ops/sampling.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

bool near(double a, double b) { return a != b && std::abs(a - b) < 1e-5 * std::max(1.0, std::abs(a)); }

// Whether row z's draw is decided at float precision (see the file comment), computed in double.
bool unambiguous(const std::vector<double>& z, const SamplingOptions& o, std::uint64_t id, std::int64_t pos) {
  const std::size_t V = z.size();
  std::vector<double> s = z;
  std::sort(s.begin(), s.end(), std::greater<double>());
  if (o.temperature == 0.0) return V < 2 || !near(s[0], s[1]);  // exact ties: the lower index, in both
  for (double& v : s) v /= o.temperature;
  // The kept set lies between {y >= sure} and {y >= maybe}.
  double sure = -INFINITY, maybe = -INFINITY;
  if (o.top_k > 0 && static_cast<std::size_t>(o.top_k) < V) {
    const double a = s[static_cast<std::size_t>(o.top_k) - 1];
    for (double v : s)
      if (near(v, a)) return false;
    sure = maybe = a;
  }
  if (o.top_p < 1.0) {
    double total = 0.0;
    for (double v : s)
      if (v >= sure) total += std::exp(v - s[0]);
    // The floor is the value at which the mass (ties grouped) first reaches top_p·total; with the
    // mass known to 1e-4·total it is the one where it reaches (top_p ∓ 1e-4)·total.
    auto floor_at = [&](double target) {
      double mass = 0.0;
      for (std::size_t j = 0; j < V && s[j] >= sure; ++j) {
        mass += std::exp(s[j] - s[0]);
        if (j + 1 < V && s[j + 1] == s[j]) continue;
        if (mass >= target) return s[j];
      }
      return sure;
    };
    const double high = floor_at((o.top_p - 1e-4) * total), low = floor_at((o.top_p + 1e-4) * total);
    sure = high;
    maybe = low;
    for (double v : s)
      if (near(v, sure) || near(v, maybe)) return false;
  }
  // The Gumbel winner over the sure set must win over the maybe set too, with a margin.
  auto winner = [&](double floor, double* second_score) {
    double best = -INFINITY, second = -INFINITY;
    std::size_t best_i = V;
    for (std::size_t i = 0; i < V; ++i) {
      const double y = z[i] / o.temperature;
      if (y < floor) continue;
      const double score =
          y - std::log(-std::log(static_cast<double>(math::sampling_uniform(o.seed, id, pos, static_cast<std::int64_t>(i)))));
      if (score > best) {
        second = best;
        best = score;
        best_i = i;
      } else if (score > second) {
        second = score;
      }
    }
    if (second_score) *second_score = best - second;
    return best_i;
  };
  double margin = 0.0;
  const std::size_t over_maybe = winner(maybe, &margin);
  return winner(sure, nullptr) == over_maybe && margin > 1e-4;
}

template <class T>
void compare(std::int64_t rows, std::int64_t V, const SamplingOptions& o, double scale) {
  SCOPED_TRACE(::testing::Message() << "rows " << rows << " V " << V << " T " << o.temperature << " top_k "
                                    << o.top_k << " top_p " << o.top_p << " " << dtype_name<T>);
  const auto logits = randn<T>({rows, V}, 0.0, scale);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows)), pos(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    ids[static_cast<std::size_t>(r)] = 1000 + 7 * r;
    pos[static_cast<std::size_t>(r)] = r % 37;
  }
  const auto id_t = Tensor<std::int64_t>::from_vector(ids, {rows});
  const auto pos_t = Tensor<std::int64_t>::from_vector(pos, {rows});
  const auto want = sample_tokens(logits, o, id_t, pos_t).to_vector();
  poison_cached_memory();
  const auto got = sample_tokens(on_gpu(logits), o, on_gpu(id_t), on_gpu(pos_t)).to_vector();
  const std::vector<double> z = cast<double>(logits).to_vector();
  int skipped = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::vector<double> row(z.begin() + r * V, z.begin() + (r + 1) * V);
    if (!unambiguous(row, o, static_cast<std::uint64_t>(ids[static_cast<std::size_t>(r)]), pos[static_cast<std::size_t>(r)])) {
      ++skipped;
      continue;
    }
    EXPECT_EQ(got[static_cast<std::size_t>(r)], want[static_cast<std::size_t>(r)]) << "row " << r;
  }
  EXPECT_LE(skipped, rows / 20) << "too many rows within rounding of a boundary";
  // Same inputs, same tokens on the GPU.
  EXPECT_EQ(sample_tokens(on_gpu(logits), o, on_gpu(id_t), on_gpu(pos_t)).to_vector(), got);
}

TEST(SamplingCuda, MatchesTheCpuReference) {
  KILN_REQUIRE_GPU();
  manual_seed(41);
  const std::vector<SamplingOptions> options = {
      {.temperature = 0.0},
      {.temperature = 1.0, .seed = 1},
      {.temperature = 0.6, .top_p = 0.95, .seed = 2},
      {.temperature = 1.0, .top_k = 50, .seed = 3},
      {.temperature = 0.8, .top_k = 5, .top_p = 0.8, .seed = 4},
      {.temperature = 1.3, .top_k = 1, .seed = 5},
  };
  for (const auto& o : options) {
    compare<float>(300, 2048, o, 3.0);
    compare<float>(64, 3, o, 1.0);
    compare<float>(64, 1025, o, 2.0);
    compare<bf16>(200, 2048, o, 3.0);
  }
  compare<float>(16, 50257, {.temperature = 0.9, .top_p = 0.9, .seed = 6}, 4.0);
  compare<double>(50, 700, {.temperature = 0.7, .top_k = 40, .top_p = 0.9, .seed = 7}, 2.0);
}

TEST(SamplingCuda, MaskedAndSpecialLogits) {
  KILN_REQUIRE_GPU();
  const auto logits = Tensor<float>::from_vector(
      {-INFINITY, -INFINITY, -INFINITY, -INFINITY,   // all masked: token 0
       NAN, 1.0f, -INFINITY, NAN,                    // NaN counts as -inf: only token 1 can win
       0.0f, 0.0f, -INFINITY, 0.0f},
      {3, 4});
  const auto ids = Tensor<std::int64_t>::from_vector({0, 1, 2}, {3});
  for (const SamplingOptions& o : {SamplingOptions{.temperature = 0.0}, SamplingOptions{.temperature = 1.0, .top_p = 0.5},
                                   SamplingOptions{.temperature = 1.0, .top_k = 2}}) {
    const auto want = sample_tokens(logits, o, ids, ids).to_vector();
    EXPECT_EQ(sample_tokens(on_gpu(logits), o, on_gpu(ids), on_gpu(ids)).to_vector(), want);
    EXPECT_EQ(want[0], 0);
    EXPECT_EQ(want[1], 1);
    EXPECT_NE(want[2], 2);
  }
}

}  // namespace
