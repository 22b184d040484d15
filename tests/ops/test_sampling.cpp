// sample_tokens on the CPU (ops/sampling.hpp): greedy, the exact top-k / top-p sets on
// hand-computed rows (ties included), the drawn distribution against softmax by a chi-square test
// over many independent draws, reproducibility and independence of the batch, and bad input.
#include <cmath>
#include <map>
#include <set>

#include <kiln/ops/sampling.hpp>

#include "test_util.hpp"

using namespace kiln;

namespace {

Tensor<std::int64_t> ids_of(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

// The token drawn for one row z by (id, position).
std::int64_t draw(const std::vector<double>& z, const SamplingOptions& o, std::int64_t id, std::int64_t pos = 0) {
  const auto logits = Tensor<double>::from_vector(z, {1, static_cast<std::int64_t>(z.size())});
  return sample_tokens(logits, o, ids_of({id}), ids_of({pos})).item();
}

// The set of tokens seen in n draws (ids 0..n-1).
std::set<std::int64_t> support(const std::vector<double>& z, const SamplingOptions& o, int n = 2000) {
  std::set<std::int64_t> seen;
  std::vector<double> rows;
  for (int i = 0; i < n; ++i) rows.insert(rows.end(), z.begin(), z.end());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n)), pos(static_cast<std::size_t>(n), 5);
  for (int i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = i;
  const auto logits = Tensor<double>::from_vector(rows, {n, static_cast<std::int64_t>(z.size())});
  for (std::int64_t t : sample_tokens(logits, o, ids_of(ids), ids_of(pos)).to_vector()) seen.insert(t);
  return seen;
}

TEST(Sampling, GreedyIsTheFirstMaximum) {
  const SamplingOptions greedy{.temperature = 0.0};
  EXPECT_EQ(draw({0.5, 3.0, -1.0, 3.0}, greedy, 7), 1);
  EXPECT_EQ(draw({NAN, -INFINITY, -5.0}, greedy, 7), 2);  // NaN counts as -inf
  EXPECT_EQ(draw({-INFINITY, -INFINITY}, greedy, 7), 0);
}

TEST(Sampling, TopKKeepsTheKLargestWithTies) {
  // log-probabilities: every token is likely enough to show up in 2000 draws if kept.
  const std::vector<double> z = {0.0, 2.0, 1.0, 2.0, 0.5, 1.0};
  EXPECT_EQ(support(z, {.top_k = 1}), (std::set<std::int64_t>{1, 3}));        // the tie at the top stays whole
  EXPECT_EQ(support(z, {.top_k = 2}), (std::set<std::int64_t>{1, 3}));
  EXPECT_EQ(support(z, {.top_k = 3}), (std::set<std::int64_t>{1, 2, 3, 5}));  // 3rd largest is 1.0: both kept
  EXPECT_EQ(support(z, {.top_k = 6}).size(), 6u);
  EXPECT_EQ(support(z, {.top_k = 0}).size(), 6u);
}

TEST(Sampling, TopPKeepsTheSmallestHeadReachingP) {
  // probabilities 0.5, 0.3, 0.15, 0.05 (as log-probabilities): cumulative 0.5, 0.8, 0.95, 1.
  const std::vector<double> z = {std::log(0.15), std::log(0.5), std::log(0.05), std::log(0.3)};
  EXPECT_EQ(support(z, {.top_p = 0.45}), (std::set<std::int64_t>{1}));
  EXPECT_EQ(support(z, {.top_p = 0.79}), (std::set<std::int64_t>{1, 3}));
  EXPECT_EQ(support(z, {.top_p = 0.81}), (std::set<std::int64_t>{0, 1, 3}));
  EXPECT_EQ(support(z, {.top_p = 0.96}), (std::set<std::int64_t>{0, 1, 2, 3}));
  // Temperature first: at T = 0.5 the probabilities are squared and renormalised:
  // 0.25, 0.09, 0.0225, 0.0025 over 0.365 -> 0.685, 0.247, 0.062, 0.007.
  EXPECT_EQ(support(z, {.temperature = 0.5, .top_p = 0.9}), (std::set<std::int64_t>{1, 3}));
  // top-k then top-p within the kept set: top-2 renormalised is 0.625, 0.375.
  EXPECT_EQ(support(z, {.top_k = 2, .top_p = 0.6}), (std::set<std::int64_t>{1}));
  EXPECT_EQ(support(z, {.top_k = 2, .top_p = 0.7}), (std::set<std::int64_t>{1, 3}));
  // Ties at the threshold stay together.
  EXPECT_EQ(support({0.0, 0.0, 0.0, -3.0}, {.top_p = 0.1}), (std::set<std::int64_t>{0, 1, 2}));
}

// Pearson's chi-square of n draws against the expected probabilities.
double chi_square(const std::vector<double>& z, const SamplingOptions& o, int n, std::uint64_t id0) {
  std::vector<double> rows;
  for (int i = 0; i < n; ++i) rows.insert(rows.end(), z.begin(), z.end());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n)), pos(static_cast<std::size_t>(n), 3);
  for (int i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(id0) + i;
  const auto tokens =
      sample_tokens(Tensor<double>::from_vector(rows, {n, static_cast<std::int64_t>(z.size())}), o, ids_of(ids),
                    ids_of(pos))
          .to_vector();
  std::vector<double> count(z.size(), 0.0);
  for (std::int64_t t : tokens) count[static_cast<std::size_t>(t)] += 1;
  double m = -INFINITY, total = 0.0;
  for (double v : z) m = std::max(m, v / o.temperature);
  for (double v : z) total += std::exp(v / o.temperature - m);
  double chi = 0.0;
  for (std::size_t i = 0; i < z.size(); ++i) {
    const double expected = n * std::exp(z[i] / o.temperature - m) / total;
    chi += (count[i] - expected) * (count[i] - expected) / expected;
  }
  return chi;
}

TEST(Sampling, DrawsFollowTheSoftmax) {
  // 8 categories (7 degrees of freedom): P(chi2_7 > 35) < 1e-5. The draws are a fixed function of
  // the seed, so the test is deterministic; a wrong distribution (e.g. T ignored, noise biased)
  // gives chi-square values in the hundreds at n = 40000 (ChiSquareDetectsAWrongDistribution).
  const std::vector<double> z = {0.3, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, -2.5};
  EXPECT_LT(chi_square(z, {.temperature = 1.0, .seed = 11}, 40000, 0), 35.0);
  EXPECT_LT(chi_square(z, {.temperature = 0.6, .seed = 12}, 40000, 1000), 35.0);
  EXPECT_LT(chi_square(z, {.temperature = 1.7, .seed = 13}, 40000, 5), 35.0);
}

TEST(Sampling, ChiSquareDetectsAWrongDistribution) {
  // Draws at T = 0.6 judged against the T = 1 softmax: far out.
  const std::vector<double> z = {0.3, -1.2, 2.0, 0.0, 1.1, -0.4, 0.9, -2.5};
  std::vector<double> rows;
  const int n = 40000;
  for (int i = 0; i < n; ++i) rows.insert(rows.end(), z.begin(), z.end());
  std::vector<std::int64_t> ids(n), pos(n, 3);
  for (int i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = i;
  const auto tokens = sample_tokens(Tensor<double>::from_vector(rows, {n, 8}), {.temperature = 0.6, .seed = 1},
                                    ids_of(ids), ids_of(pos))
                          .to_vector();
  std::vector<double> count(8, 0.0);
  for (std::int64_t t : tokens) count[static_cast<std::size_t>(t)] += 1;
  double total = 0.0;
  for (double v : z) total += std::exp(v);
  double chi = 0.0;
  for (std::size_t i = 0; i < 8; ++i) {
    const double expected = n * std::exp(z[i]) / total;
    chi += (count[i] - expected) * (count[i] - expected) / expected;
  }
  EXPECT_GT(chi, 200.0);
}

TEST(Sampling, SameSeedSameSamplesWhateverTheBatch) {
  manual_seed(3);
  const auto logits = randn<float>({6, 50}, 0.0, 2.0);
  const auto ids = ids_of({10, 11, 12, 13, 14, 15});
  const auto pos = ids_of({4, 4, 9, 9, 20, 21});
  const SamplingOptions o{.temperature = 0.9, .top_k = 20, .top_p = 0.95, .seed = 77};
  const auto a = sample_tokens(logits, o, ids, pos).to_vector();
  EXPECT_EQ(a, sample_tokens(logits, o, ids, pos).to_vector());
  // Each row alone, and the rows in another order, give the same tokens.
  for (std::int64_t r = 0; r < 6; ++r) {
    const auto one = sample_tokens(narrow(logits, 0, r, 1), o, narrow(ids, 0, r, 1), narrow(pos, 0, r, 1));
    EXPECT_EQ(one.item(), a[static_cast<std::size_t>(r)]);
  }
  const auto perm = ids_of({5, 3, 1, 0, 2, 4});
  const auto b =
      sample_tokens(index_select(logits, 0, perm), o, index_select(ids, 0, perm), index_select(pos, 0, perm)).to_vector();
  for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(b[i], a[static_cast<std::size_t>(perm.to_vector()[i])]);
  // Another seed changes most draws.
  SamplingOptions other = o;
  other.seed = 78;
  std::vector<std::int64_t> many_ids(400), many_pos(400, 0);
  for (int i = 0; i < 400; ++i) many_ids[static_cast<std::size_t>(i)] = i;
  const auto wide = expand(narrow(logits, 0, 0, 1), {400, 50});
  const auto x = sample_tokens(wide, o, ids_of(many_ids), ids_of(many_pos)).to_vector();
  const auto y = sample_tokens(wide, other, ids_of(many_ids), ids_of(many_pos)).to_vector();
  int same = 0;
  for (std::size_t i = 0; i < x.size(); ++i) same += x[i] == y[i];
  EXPECT_LT(same, 300);
}

TEST(Sampling, LowPrecisionLogits) {
  // bf16 logits are widened exactly; the draw equals the one from the same values in double.
  manual_seed(5);
  const auto z = randn<bf16>({32, 70}, 0.0, 3.0);
  std::vector<std::int64_t> ids(32), pos(32, 1);
  for (int i = 0; i < 32; ++i) ids[static_cast<std::size_t>(i)] = i;
  const SamplingOptions o{.temperature = 0.7, .top_p = 0.9, .seed = 2};
  EXPECT_EQ(sample_tokens(z, o, ids_of(ids), ids_of(pos)).to_vector(),
            sample_tokens(cast<double>(z), o, ids_of(ids), ids_of(pos)).to_vector());
}

TEST(Sampling, BadInput) {
  const auto z = zeros<float>({2, 5});
  const auto two = ids_of({0, 1});
  EXPECT_KILN_ERROR(sample_tokens(z, {.temperature = -1.0}, two, two), "sample_tokens", "temperature");
  EXPECT_KILN_ERROR(sample_tokens(z, {.temperature = NAN}, two, two), "temperature");
  EXPECT_KILN_ERROR(sample_tokens(z, {.top_k = -2}, two, two), "top_k");
  EXPECT_KILN_ERROR(sample_tokens(z, {.top_p = 0.0}, two, two), "top_p");
  EXPECT_KILN_ERROR(sample_tokens(z, {.top_p = 1.5}, two, two), "top_p");
  EXPECT_KILN_ERROR(sample_tokens(zeros<float>({5}), {}, two, two), "[rows, vocab]");
  EXPECT_KILN_ERROR(sample_tokens(z, {}, ids_of({0}), two), "sample_ids", "[2]");
  EXPECT_KILN_ERROR(sample_tokens(zeros<float>({2, 0}), {}, two, two), "vocab > 0");
}

}  // namespace
