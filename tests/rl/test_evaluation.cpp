// rl/evaluation.hpp: Wilson intervals, the percentile bootstrap, the paired difference of two
// models, pass@1/pass@k, majority vote and cons@k, greedy accuracy, against values worked out by
// hand; plus rl/jsonl.hpp, the metrics writer the evaluation and the trainer log through.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <kiln/rl/evaluation.hpp>
#include <kiln/rl/jsonl.hpp>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::rl;

namespace {

std::vector<Sample> samples(std::initializer_list<std::pair<const char*, bool>> list) {
  std::vector<Sample> out;
  for (const auto& [answer, correct] : list) out.push_back({answer, correct});
  return out;
}

}  // namespace

TEST(Wilson, HandComputedValues) {
  // 8/10, z = 1.96: p = 0.8, z²/n = 0.38416, denominator 1.38416.
  //   centre = (0.8 + 0.19208) / 1.38416 = 0.716738
  //   half   = (1.96 / 1.38416) · sqrt(0.8·0.2/10 + 3.8416/400) = 1.416022 · sqrt(0.025604) = 0.226581
  //   → [0.4902, 0.9433]
  const Interval w = wilson_interval(8, 10);
  EXPECT_DOUBLE_EQ(w.estimate, 0.8);
  EXPECT_NEAR(w.lo, 0.4902, 5e-5);
  EXPECT_NEAR(w.hi, 0.9433, 5e-5);
  EXPECT_EQ(w.n, 10);
  // 0/10: centre = half = 0.19208 / 1.38416, so lo = 0 and hi = 0.38416 / 1.38416 = 0.27754.
  const Interval zero = wilson_interval(0, 10);
  EXPECT_NEAR(zero.lo, 0.0, 1e-15);
  EXPECT_NEAR(zero.hi, 0.38416 / 1.38416, 1e-12);
  // 10/10 mirrors it.
  const Interval all = wilson_interval(10, 10);
  EXPECT_NEAR(all.lo, 1.0 - 0.38416 / 1.38416, 1e-12);
  EXPECT_NEAR(all.hi, 1.0, 1e-15);
  // 1/2, z = 1: p = 0.5, z²/n = 0.5, centre 0.5, half = (1/1.5)·sqrt(0.125 + 0.0625) = 0.288675.
  const Interval half = wilson_interval(1, 2, 1.0);
  EXPECT_NEAR(half.lo, 0.5 - std::sqrt(0.1875) / 1.5, 1e-15);
  EXPECT_NEAR(half.hi, 0.5 + std::sqrt(0.1875) / 1.5, 1e-15);
  // It narrows as n grows at a fixed rate.
  EXPECT_LT(wilson_interval(80, 100).hi - wilson_interval(80, 100).lo, w.hi - w.lo);

  EXPECT_KILN_ERROR(wilson_interval(0, 0), "wilson_interval", "n > 0");
  EXPECT_KILN_ERROR(wilson_interval(11, 10), "wilson_interval", "successes 11");
  EXPECT_KILN_ERROR(wilson_interval(1, 10, -1.0), "wilson_interval", "z");
}

TEST(Bootstrap, ExactSmallCases) {
  // {0, 1}: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
  // 97.5% quantiles of 10000 resamples are 0 and 1.
  const Interval a = bootstrap_mean_interval({0.0, 1.0});
  EXPECT_DOUBLE_EQ(a.estimate, 0.5);
  EXPECT_EQ(a.lo, 0.0);
  EXPECT_EQ(a.hi, 1.0);
  // {0, 0, 0, 1}: the mean is k/4, k ~ Binomial(4, 1/4); P(k = 0) = 0.316, P(k <= 2) = 0.949,
  // P(k <= 3) = 0.996, so the quantiles are 0 and 0.75.
  const Interval b = bootstrap_mean_interval({0.0, 0.0, 0.0, 1.0});
  EXPECT_DOUBLE_EQ(b.estimate, 0.25);
  EXPECT_EQ(b.lo, 0.0);
  EXPECT_EQ(b.hi, 0.75);
  // All equal: every resample has the same mean.
  const Interval c = bootstrap_mean_interval({0.3, 0.3, 0.3});
  EXPECT_DOUBLE_EQ(c.lo, 0.3);
  EXPECT_DOUBLE_EQ(c.hi, 0.3);
}

TEST(Bootstrap, MatchesTheExactBinomialQuantilesAndIsDeterministic) {
  // For 0/1 values with s ones out of n, a resample's mean is exactly Binomial(n, s/n) / n, so the
  // bootstrap quantiles can be checked against the binomial CDF computed here. With R = 10000
  // resamples the empirical q-quantile lies, with overwhelming probability, between the exact
  // quantiles at q ∓ 4 Monte Carlo standard errors sqrt(q(1 − q)/R).
  const int n = 400, s = 120;
  std::vector<double> v(n, 0.0);
  for (int i = 0; i < s; ++i) v[static_cast<std::size_t>(i * 3 + 1)] = 1.0;
  const double p = static_cast<double>(s) / n;
  std::vector<double> cdf;
  double acc = 0.0;
  for (int k = 0; k <= n; ++k) {
    acc += std::exp(std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0) + k * std::log(p) +
                    (n - k) * std::log1p(-p));
    cdf.push_back(acc);
  }
  auto exact_quantile = [&](double q) {  // smallest k/n with CDF(k) >= q
    int k = 0;
    while (cdf[static_cast<std::size_t>(k)] < q) ++k;
    return static_cast<double>(k) / n;
  };
  const Interval a = bootstrap_mean_interval(v);
  EXPECT_DOUBLE_EQ(a.estimate, 0.3);
  for (auto [q, got] : {std::pair{0.025, a.lo}, std::pair{0.975, a.hi}}) {
    const double mc = 4.0 * std::sqrt(q * (1.0 - q) / 10000.0);
    EXPECT_GE(got, exact_quantile(q - mc)) << q;
    EXPECT_LE(got, exact_quantile(q + mc)) << q;
  }
  // Close to the normal interval 0.3 ± 1.96·sqrt(0.3·0.7/400) = ± 0.0449 at this size, up to the
  // grid of possible means (1/400 = 0.0025) and the binomial's skew.
  const double normal = 1.96 * std::sqrt(0.3 * 0.7 / 400.0);
  EXPECT_NEAR(a.estimate - a.lo, normal, 0.0025 + 0.05 * normal);
  EXPECT_NEAR(a.hi - a.estimate, normal, 0.0025 + 0.05 * normal);

  // The same inputs and seed give the same bits; another seed other draws, nearly the same interval.
  const Interval b = bootstrap_mean_interval(v);
  EXPECT_EQ(a.lo, b.lo);
  EXPECT_EQ(a.hi, b.hi);
  std::vector<double> rates(37);  // non-0/1 values, so different draws show in the quantiles
  for (std::size_t i = 0; i < rates.size(); ++i) rates[i] = uniform_at(5, i);
  BootstrapOptions other;
  other.seed = 99;
  const Interval c = bootstrap_mean_interval(rates), d = bootstrap_mean_interval(rates, other);
  EXPECT_TRUE(c.lo != d.lo || c.hi != d.hi);
  EXPECT_NEAR(c.lo, d.lo, 0.02);
  EXPECT_NEAR(c.hi, d.hi, 0.02);
  // A 50% interval is narrower than the 95% one.
  other.confidence = 0.5;
  const Interval narrow = bootstrap_mean_interval(rates, other);
  EXPECT_LT(narrow.hi - narrow.lo, d.hi - d.lo);
}

TEST(Bootstrap, CoverageNearNominal) {
  // 400 simulated evaluations of 60 problems, each solved with probability 0.6 (per-problem rates
  // averaged over 4 samples of a per-problem difficulty): the 95% interval should contain the
  // true mean about 95% of the time; the percentile bootstrap runs a little under at this size.
  BootstrapOptions opt;
  opt.resamples = 1000;
  int covered = 0;
  const int trials = 400;
  std::uint64_t counter = 0;
  for (int t = 0; t < trials; ++t) {
    std::vector<double> rates;
    for (int p = 0; p < 60; ++p) {
      const double difficulty = uniform_at(77, counter++) < 0.5 ? 0.3 : 0.9;  // true mean 0.6
      int c = 0;
      for (int k = 0; k < 4; ++k) c += uniform_at(77, counter++) < difficulty ? 1 : 0;
      rates.push_back(c / 4.0);
    }
    opt.seed = static_cast<std::uint64_t>(t) + 1000;
    const Interval i = bootstrap_mean_interval(rates, opt);
    covered += i.lo <= 0.6 && 0.6 <= i.hi ? 1 : 0;
  }
  const double coverage = static_cast<double>(covered) / trials;
  EXPECT_GT(coverage, 0.90);  // 3 standard errors (0.011) below 0.94
  EXPECT_LT(coverage, 0.985);
}

TEST(Bootstrap, BadInput) {
  EXPECT_KILN_ERROR(bootstrap_mean_interval({}), "bootstrap_mean_interval", "at least one");
  EXPECT_KILN_ERROR(bootstrap_mean_interval({1.0, NAN}), "bootstrap_mean_interval", "value 1");
  BootstrapOptions o;
  o.confidence = 1.0;
  EXPECT_KILN_ERROR(bootstrap_mean_interval({1.0}, o), "bootstrap_mean_interval", "confidence");
}

namespace {

// One simulated evaluation of two models on `problems` problems, k = 8 samples each: problem i has
// a difficulty q ∈ {0.05, 0.5, 0.9} (a third each); model b solves a sample with probability q,
// model a with q + 0.04, so the true difference of their pass@1 is 0.04 on every problem.
std::pair<std::vector<double>, std::vector<double>> two_models(int problems, std::uint64_t& counter) {
  std::vector<double> a, b;
  for (int p = 0; p < problems; ++p) {
    const double u = uniform_at(91, counter++), q = u < 1.0 / 3 ? 0.05 : u < 2.0 / 3 ? 0.5 : 0.9;
    int ca = 0, cb = 0;
    for (int k = 0; k < 8; ++k) {
      ca += uniform_at(91, counter++) < q + 0.04 ? 1 : 0;
      cb += uniform_at(91, counter++) < q ? 1 : 0;
    }
    a.push_back(ca / 8.0);
    b.push_back(cb / 8.0);
  }
  return {a, b};
}

}  // namespace

TEST(PairedDifference, HandCasesAndBadInput) {
  // The interval is the bootstrap of the differences themselves, resampled with the same draws.
  const std::vector<double> a{1.0, 0.0, 1.0, 1.0, 0.5}, b{1.0, 0.0, 0.0, 1.0, 0.25};
  const Interval d = paired_difference_interval(a, b), direct = bootstrap_mean_interval({0.0, 0.0, 1.0, 0.0, 0.25});
  EXPECT_DOUBLE_EQ(d.estimate, 0.25);
  EXPECT_EQ(d.lo, direct.lo);
  EXPECT_EQ(d.hi, direct.hi);
  EXPECT_EQ(d.n, 5);
  // The same model twice: exactly 0; a model ahead by 0.125 on every problem: exactly 0.125.
  const Interval same = paired_difference_interval(a, a);
  EXPECT_EQ(same.estimate, 0.0);
  EXPECT_EQ(same.lo, 0.0);
  EXPECT_EQ(same.hi, 0.0);
  const std::vector<double> lower{0.875, 0.0, 0.25, 0.5, 0.375}, higher{1.0, 0.125, 0.375, 0.625, 0.5};
  const Interval shift = paired_difference_interval(higher, lower);
  EXPECT_DOUBLE_EQ(shift.lo, 0.125);
  EXPECT_DOUBLE_EQ(shift.hi, 0.125);
  EXPECT_KILN_ERROR(paired_difference_interval({1.0}, {1.0, 0.0}), "paired_difference_interval", "1 and 2");
  EXPECT_KILN_ERROR(paired_difference_interval({}, {}), "paired_difference_interval", "non-empty");
  EXPECT_KILN_ERROR(paired_difference_interval({1.0, 0.0}, {1.0, NAN}), "paired_difference_interval", "pair 1");
}

TEST(PairedDifference, SeesWhatDisjointIntervalsMissAndCoversTheTruth) {
  // 400 problems, a true difference of 0.04: the problems' spread of difficulty makes each model's
  // own interval about ±0.035 wide, so the two overlap, while the paired interval (about ±0.018:
  // most problems are solved by both or by neither) lies above 0 and holds 0.04.
  std::uint64_t counter = 0;
  const auto [a, b] = two_models(400, counter);
  const Interval ia = bootstrap_mean_interval(a), ib = bootstrap_mean_interval(b), d = paired_difference_interval(a, b);
  EXPECT_LT(ib.lo, ia.lo);
  EXPECT_GT(ib.hi, ia.lo) << "the unpaired intervals overlap";
  EXPECT_GT(d.lo, 0.0);
  EXPECT_LT(d.lo, 0.04);
  EXPECT_GT(d.hi, 0.04);
  EXPECT_LT(d.hi - d.lo, 0.6 * ((ia.hi - ia.lo) + (ib.hi - ib.lo)) / 2);
  EXPECT_NEAR(d.estimate, ia.estimate - ib.estimate, 1e-12);

  // Coverage of the true 0.04 over 300 simulated evaluations of 100 problems: near 95% (the
  // percentile bootstrap runs a little under at this size, as for one model above).
  BootstrapOptions opt;
  opt.resamples = 1000;
  int covered = 0;
  const int trials = 300;
  for (int t = 0; t < trials; ++t) {
    const auto [x, y] = two_models(100, counter);
    opt.seed = static_cast<std::uint64_t>(t) + 2000;
    const Interval i = paired_difference_interval(x, y, opt);
    covered += i.lo <= 0.04 && 0.04 <= i.hi ? 1 : 0;
  }
  const double coverage = static_cast<double>(covered) / trials;
  EXPECT_GT(coverage, 0.90);  // about 3.5 standard errors (0.0126) below 0.945
  EXPECT_LT(coverage, 0.985);
}

TEST(PassAtK, EstimatorAndAverages) {
  // n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10 = 0.7. k = 1: c/n. n − c < k: 1. c = 0: 0.
  EXPECT_NEAR(pass_at_k_estimate(5, 2, 2), 0.7, 1e-15);
  EXPECT_NEAR(pass_at_k_estimate(5, 2, 1), 0.4, 1e-15);
  EXPECT_EQ(pass_at_k_estimate(4, 3, 2), 1.0);
  EXPECT_EQ(pass_at_k_estimate(4, 0, 3), 0.0);
  // n = 10, c = 3, k = 4: 1 − C(7,4)/C(10,4) = 1 − 35/210 = 5/6.
  EXPECT_NEAR(pass_at_k_estimate(10, 3, 4), 5.0 / 6.0, 1e-15);
  EXPECT_KILN_ERROR(pass_at_k_estimate(4, 1, 5), "pass_at_k_estimate", "k must be in [1, n = 4]");

  // pass@1 averaged over samples: (2/4 + 4/4 + 0/4 + 1/2) / 4 = 0.5.
  const std::vector<std::vector<Sample>> problems = {
      samples({{"1", true}, {"2", false}, {"1", true}, {"3", false}}),
      samples({{"7", true}, {"7", true}, {"7", true}, {"7", true}}),
      samples({{"", false}, {"5", false}, {"6", false}, {"5", false}}),
      samples({{"a", true}, {"b", false}}),
  };
  const Interval p1 = pass_at_1(problems);
  EXPECT_DOUBLE_EQ(p1.estimate, 0.5);
  EXPECT_EQ(p1.n, 4);
  EXPECT_LE(p1.lo, p1.estimate);
  EXPECT_GE(p1.hi, p1.estimate);
  EXPECT_GE(p1.lo, 0.0);
  EXPECT_LE(p1.hi, 1.0);
  // pass@2: (1 − C(2,2)/C(4,2) = 5/6, 1, 0, 1) / 4 = 17/24.
  EXPECT_NEAR(pass_at_k(problems, 2).estimate, (5.0 / 6.0 + 1.0 + 0.0 + 1.0) / 4.0, 1e-15);
  EXPECT_KILN_ERROR(pass_at_1({}), "pass_at_1", "at least one problem");
  EXPECT_KILN_ERROR(pass_at_1({samples({{"1", true}}), {}}), "pass_at_1", "problem 1 has no samples");
}

TEST(MajorityVote, WinnerTiesAndMissingAnswers) {
  EXPECT_EQ(majority_vote(samples({{"7", false}, {"8", true}, {"8", true}})), std::optional<std::size_t>(1));
  // A 2–2 tie between "42" (first at 0) and "41" (first at 1): the earlier first occurrence wins.
  EXPECT_EQ(majority_vote(samples({{"42", true}, {"41", false}, {"42", true}, {"", false}, {"41", false}})),
            std::optional<std::size_t>(0));
  // The tie-break follows sample order, not key order: "b" precedes "a".
  EXPECT_EQ(majority_vote(samples({{"b", false}, {"a", true}})), std::optional<std::size_t>(0));
  // Empty keys do not vote, even when they are the majority.
  EXPECT_EQ(majority_vote(samples({{"", false}, {"", false}, {"9", true}})), std::optional<std::size_t>(2));
  EXPECT_EQ(majority_vote(samples({{"", false}, {"", false}})), std::nullopt);

  EXPECT_KILN_ERROR(majority_vote(samples({{"5", true}, {"6", false}, {"5", false}})), "majority_vote", "samples 0 and 2",
                    "\"5\"");
  EXPECT_KILN_ERROR(majority_vote(samples({{"", true}})), "majority_vote", "sample 0 has no answer");
}

TEST(ConsAtK, MajorityAccuracyWithWilson) {
  const std::vector<std::vector<Sample>> problems = {
      samples({{"42", true}, {"41", false}, {"42", true}}),   // 42 wins: right
      samples({{"3", false}, {"3", false}, {"4", true}}),     // 3 wins: wrong though one sample is right
      samples({{"", false}, {"", false}}),                    // no answer: wrong
      samples({{"x", false}, {"y", true}}),                   // tie, x first: wrong
      samples({{"1", true}}),                                 // right
  };
  const Interval c = cons_at_k(problems);
  const Interval w = wilson_interval(2, 5);
  EXPECT_DOUBLE_EQ(c.estimate, 0.4);
  EXPECT_EQ(c.lo, w.lo);
  EXPECT_EQ(c.hi, w.hi);
  EXPECT_EQ(c.n, 5);
  EXPECT_KILN_ERROR(cons_at_k({samples({{"1", true}}), samples({{"2", true}, {"2", false}})}), "cons_at_k", "problem 1",
                    "majority_vote");
}

TEST(Greedy, WilsonOverProblems) {
  const Interval g = greedy_accuracy({true, true, false, true, true, true, true, false, true, true});
  EXPECT_DOUBLE_EQ(g.estimate, 0.8);
  EXPECT_NEAR(g.lo, 0.4902, 5e-5);  // the hand-computed 8/10 interval above
  EXPECT_NEAR(g.hi, 0.9433, 5e-5);
  EXPECT_KILN_ERROR(greedy_accuracy({}), "greedy_accuracy", "at least one problem");
}

TEST(Jsonl, WritesOneObjectPerLineAndAppends) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kiln_test_jsonl_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "metrics.jsonl").string();
  auto read_lines = [&] {
    std::ifstream in(path);
    std::vector<io::json> out;
    for (std::string line; std::getline(in, line);) out.push_back(io::json::parse(line));
    return out;
  };
  {
    JsonlWriter w(path);
    w.write({{"step", 1}, {"reward_mean", 0.25}, {"reward/accuracy/mean", 0.5}});
    w.write({{"step", 2}, {"kl", NAN}});
    EXPECT_KILN_ERROR(w.write(io::json::array({1, 2})), "JsonlWriter::write", "must be a JSON object", "array");
  }
  auto lines = read_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_EQ(lines[0]["reward/accuracy/mean"], 0.5);
  EXPECT_TRUE(lines[1]["kl"].is_null());  // NaN has no JSON spelling
  {
    JsonlWriter w(path, /*append=*/true);
    w.write({{"step", 3}});
  }
  EXPECT_EQ(read_lines().size(), 3u);
  { JsonlWriter w(path); }  // a fresh run truncates
  EXPECT_EQ(read_lines().size(), 0u);
  EXPECT_KILN_ERROR(JsonlWriter((dir / "missing" / "m.jsonl").string()), "JsonlWriter", "cannot open", "missing");
  std::filesystem::remove_all(dir);
}
