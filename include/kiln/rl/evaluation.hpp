// Evaluation statistics for sampled answers: pass@1 averaged over k samples, pass@k, cons@k
// (majority vote) and greedy accuracy, each with a 95% confidence interval. Independent of the
// tasks: the input is, per problem, the list of its samples as (answer key, correct) pairs, where
// the key is the task's normalised final answer ("" when none could be extracted).
//
// The protocol follows DeepSeek-R1 §3: k samples per problem at temperature 0.6, top-p 0.95;
// pass@1 = (1/P) Σ_i c_i / k_i (c_i correct of the k_i samples of problem i); cons@k is the
// accuracy of the majority-voted answer; greedy is one temperature-0 answer per problem.
//
// ---- Intervals ----------------------------------------------------------------------------------
// Problems are the independent unit: the k samples of one problem share its difficulty, so they
// are correlated, and treating all P·k samples as independent trials would give an interval that
// is too narrow.
// - greedy and cons@k give one 0/1 outcome per problem: a binomial proportion over P problems,
//   with the Wilson score interval (Wilson 1927), which, unlike the normal ("Wald") interval,
//   stays inside [0, 1] and keeps close to its nominal coverage near 0 and 1 and for small P:
//     p̂ = s/n,  centre = (p̂ + z²/2n) / (1 + z²/n),
//     half-width = z / (1 + z²/n) · sqrt( p̂(1 − p̂)/n + z²/4n² ),   z = 1.96 for 95%.
// - pass@1 and pass@k are means of per-problem rates in [0, 1], not binomial counts: their
//   interval is a percentile bootstrap over problems (Efron 1979): resample the P per-problem
//   rates with replacement R = 10000 times, take the mean of each resample, and report the 2.5%
//   and 97.5% quantiles (linear interpolation between order statistics, NumPy's default). Chosen
//   over a normal approximation on the per-problem rates because those are typically bimodal
//   (most problems always or never solved) and P can be small (30 for AIME), where the normal
//   interval can leave [0, 1]; the bootstrap interval stays inside and follows the skew. Its known
//   weakness: it is somewhat narrow for very small P, and of zero width when every problem has the
//   same rate (e.g. none solved) — read it together with P. The resampling draws come from
//   Philox (core/random.hpp) with a fixed seed: the same inputs give the same interval, bit for
//   bit, on any machine.
//
// ---- Comparing two models on the same problems --------------------------------------------------
// Two models evaluated on the same P problems are compared by the mean of their per-problem
// differences, d_i = a_i − b_i (a_i, b_i: each model's fraction of correct samples on problem i),
// with a percentile-bootstrap interval that resamples problems, both models' rates of a problem
// together (paired_difference_interval). The pairing removes what the problems' difficulty
// contributes to each model's own interval: most problems are solved by both or by neither, and
// their d_i is 0. Asking instead whether the two models' own 95% intervals are disjoint ignores the
// pairing and is far stricter than a 5% test (for two equally wide intervals it asks for about
// 2.8 standard errors of the difference where 1.96 would do, and more when the rates are
// correlated), so it misses real differences; the paired interval is the test to read.
//
// ---- cons@k ---------------------------------------------------------------------------------------
// The answer with the most votes wins; samples with an empty key do not vote; a problem where no
// sample has a key counts as wrong. Ties go to the tied answer that occurs first in the sample
// order: deterministic, independent of how keys sort, and as fair as a coin since the samples are
// i.i.d. The voted answer is correct when its samples are marked correct; all samples with one key
// must agree on correctness (they are the same answer), and a sample without a key cannot be
// correct — either inconsistency throws, since it means the key extraction and the grader disagree.
//
// ---- pass@k -------------------------------------------------------------------------------------
// The unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"):
// with n samples of which c are correct, pass@k = 1 − C(n−c, k) / C(n, k), computed as the product
// 1 − Π_{i=n−c+1}^{n} (1 − k/i) to avoid huge binomials. pass@1 equals c/n.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/core/random.hpp"

namespace kiln::rl {

// A point estimate with its confidence interval [lo, hi]; n = the number of independent units
// (problems) it rests on.
struct Interval {
  double estimate = 0.0, lo = 0.0, hi = 0.0;
  std::int64_t n = 0;
};

// One sampled answer of one problem.
struct Sample {
  std::string answer;  // normalised final answer; "" when none was extracted
  bool correct = false;
};

struct BootstrapOptions {
  std::int64_t resamples = 10000;
  double confidence = 0.95;
  std::uint64_t seed = 0x5EEDull;
};

// Wilson score interval for `successes` out of `n` trials (see the header comment).
inline Interval wilson_interval(std::int64_t successes, std::int64_t n, double z = 1.96) {
  const char* op = "wilson_interval";
  check(n > 0, op, "needs n > 0 trials, got ", n);
  check(successes >= 0 && successes <= n, op, "successes ", successes, " outside [0, ", n, "]");
  check(std::isfinite(z) && z > 0.0, op, "z must be finite and > 0, got ", z);
  const double nn = static_cast<double>(n), p = static_cast<double>(successes) / nn, z2 = z * z;
  const double denom = 1.0 + z2 / nn;
  const double centre = (p + z2 / (2.0 * nn)) / denom;
  const double half = z / denom * std::sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn));
  return {p, std::max(0.0, centre - half), std::min(1.0, centre + half), n};
}

// The mean of `values` with a percentile-bootstrap interval (see the header comment).
inline Interval bootstrap_mean_interval(const std::vector<double>& values, const BootstrapOptions& options = {}) {
  const char* op = "bootstrap_mean_interval";
  check(!values.empty(), op, "needs at least one value");
  check(options.resamples >= 2, op, "resamples must be >= 2, got ", options.resamples);
  check(options.confidence > 0.0 && options.confidence < 1.0, op, "confidence must be in (0, 1), got ",
        options.confidence);
  for (std::size_t i = 0; i < values.size(); ++i)
    check(std::isfinite(values[i]), op, "value ", i, " is ", values[i]);
  const auto n = static_cast<std::uint64_t>(values.size());
  double total = 0.0;
  for (double v : values) total += v;

  // Resample r draws its n indices from Philox blocks [r·b, r·b + b), b = ceil(n / 4): four 32-bit
  // words per block, each mapped to [0, n) by a multiply-shift (Lemire 2019; bias ≤ n / 2^32).
  std::vector<double> means(static_cast<std::size_t>(options.resamples));
  const std::uint64_t blocks = (n + 3) / 4;
  for (std::uint64_t r = 0; r < means.size(); ++r) {
    double s = 0.0;
    for (std::uint64_t i = 0; i < n; i += 4) {
      const auto w = philox::at(options.seed, r * blocks + i / 4);
      for (std::uint64_t j = 0; j < 4 && i + j < n; ++j)
        s += values[static_cast<std::size_t>((static_cast<std::uint64_t>(w[j]) * n) >> 32)];
    }
    means[r] = s / static_cast<double>(n);
  }
  std::sort(means.begin(), means.end());
  auto quantile = [&](double q) {
    const double h = q * static_cast<double>(means.size() - 1);
    const auto i = static_cast<std::size_t>(std::floor(h));
    if (i + 1 >= means.size()) return means.back();
    return means[i] + (h - static_cast<double>(i)) * (means[i + 1] - means[i]);
  };
  const double alpha = 1.0 - options.confidence;
  return {total / static_cast<double>(n), quantile(alpha / 2.0), quantile(1.0 - alpha / 2.0),
          static_cast<std::int64_t>(n)};
}

// The mean of a_i − b_i over paired values (two models' per-problem rates on the same problems, in
// the same order) with a percentile-bootstrap interval over the pairs (see the header comment).
inline Interval paired_difference_interval(const std::vector<double>& a, const std::vector<double>& b,
                                           const BootstrapOptions& options = {}) {
  const char* op = "paired_difference_interval";
  check(!a.empty() && a.size() == b.size(), op,
        "needs two non-empty lists of equal length (one value per problem), got ", a.size(), " and ", b.size());
  std::vector<double> d(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    check(std::isfinite(a[i]) && std::isfinite(b[i]), op, "pair ", i, " is (", a[i], ", ", b[i], ")");
    d[i] = a[i] - b[i];
  }
  return bootstrap_mean_interval(d, options);
}

namespace detail {

inline void check_problems(const char* op, const std::vector<std::vector<Sample>>& problems) {
  check(!problems.empty(), op, "needs at least one problem");
  for (std::size_t i = 0; i < problems.size(); ++i)
    check(!problems[i].empty(), op, "problem ", i, " has no samples");
}

inline std::int64_t count_correct(const std::vector<Sample>& samples) {
  std::int64_t c = 0;
  for (const Sample& s : samples) c += s.correct ? 1 : 0;
  return c;
}

}  // namespace detail

// The unbiased pass@k estimate for one problem with n samples of which c are correct.
inline double pass_at_k_estimate(std::int64_t n, std::int64_t c, std::int64_t k) {
  const char* op = "pass_at_k_estimate";
  check(n > 0 && c >= 0 && c <= n, op, "needs 0 <= c <= n and n > 0, got n ", n, ", c ", c);
  check(k >= 1 && k <= n, op, "k must be in [1, n = ", n, "], got ", k);
  if (n - c < k) return 1.0;  // every k-subset holds a correct sample
  double all_wrong = 1.0;     // C(n−c, k) / C(n, k)
  for (std::int64_t i = n - c + 1; i <= n; ++i) all_wrong *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - all_wrong;
}

// pass@k over problems (each with at least k samples), bootstrap interval over problems.
inline Interval pass_at_k(const std::vector<std::vector<Sample>>& problems, std::int64_t k,
                          const BootstrapOptions& options = {}) {
  detail::check_problems("pass_at_k", problems);
  std::vector<double> rates;
  for (const auto& p : problems)
    rates.push_back(pass_at_k_estimate(static_cast<std::int64_t>(p.size()), detail::count_correct(p), k));
  return bootstrap_mean_interval(rates, options);
}

// Each problem's fraction of correct samples, c_i / k_i, in the problems' order.
inline std::vector<double> per_problem_pass_at_1(const std::vector<std::vector<Sample>>& problems) {
  detail::check_problems("pass_at_1", problems);
  std::vector<double> rates;
  for (const auto& p : problems)
    rates.push_back(static_cast<double>(detail::count_correct(p)) / static_cast<double>(p.size()));
  return rates;
}

// pass@1 averaged over each problem's samples: (1/P) Σ c_i / k_i, bootstrap interval over problems.
inline Interval pass_at_1(const std::vector<std::vector<Sample>>& problems, const BootstrapOptions& options = {}) {
  return bootstrap_mean_interval(per_problem_pass_at_1(problems), options);
}

// The index of a sample holding the majority answer (its first occurrence), or nullopt when no
// sample has an answer. Throws when samples of one answer disagree on correctness, or a sample
// without an answer is marked correct.
inline std::optional<std::size_t> majority_vote(const std::vector<Sample>& samples) {
  const char* op = "majority_vote";
  struct Tally {
    std::size_t first;
    std::int64_t votes;
  };
  std::map<std::string, Tally> tally;
  std::optional<std::size_t> best;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    if (s.answer.empty()) {
      check(!s.correct, op, "sample ", i, " has no answer but is marked correct");
      continue;
    }
    auto [it, inserted] = tally.try_emplace(s.answer, Tally{i, 0});
    check(samples[it->second.first].correct == s.correct, op, "samples ", it->second.first, " and ", i,
          " both answer \"", s.answer, "\" but only one is marked correct");
    ++it->second.votes;
  }
  std::int64_t best_votes = 0;
  for (const auto& [answer, t] : tally)  // more votes wins; on a tie, the earlier first occurrence
    if (t.votes > best_votes || (t.votes == best_votes && best && t.first < *best)) {
      best_votes = t.votes;
      best = t.first;
    }
  return best;
}

// cons@k: accuracy of the majority-voted answer per problem, Wilson interval over problems.
inline Interval cons_at_k(const std::vector<std::vector<Sample>>& problems, double z = 1.96) {
  const char* op = "cons_at_k";
  detail::check_problems(op, problems);
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    std::optional<std::size_t> voted;
    try {
      voted = majority_vote(problems[i]);
    } catch (const Error& e) {
      fail(op, "problem ", i, ": ", e.what());
    }
    correct += voted && problems[i][*voted].correct ? 1 : 0;
  }
  return wilson_interval(correct, static_cast<std::int64_t>(problems.size()), z);
}

// Greedy accuracy: one answer per problem, Wilson interval.
inline Interval greedy_accuracy(const std::vector<bool>& correct, double z = 1.96) {
  check(!correct.empty(), "greedy_accuracy", "needs at least one problem");
  std::int64_t c = 0;
  for (bool b : correct) c += b ? 1 : 0;
  return wilson_interval(c, static_cast<std::int64_t>(correct.size()), z);
}

}  // namespace kiln::rl
