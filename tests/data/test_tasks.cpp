// Verifiable tasks: disjoint train/test splits, determinism by seed, Countdown solvability with
// every number used exactly once (checked by an independent brute-force solver), exact rational
// evaluation, the verifier on correct, wrong and malformed outputs, the last-answer-block scan, and
// the worked solutions (every arithmetic claim in them is true).
#include <kiln/data/tasks.hpp>

#include <limits>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <tuple>
#include <unordered_set>

#include "test_util.hpp"

namespace {

using namespace kiln::data;

Problem countdown_problem(std::vector<std::int64_t> numbers, std::int64_t target, std::string solution = "") {
  Problem p;
  p.kind = TaskKind::countdown;
  p.numbers = std::move(numbers);
  p.target = target;
  p.solution = std::move(solution);
  return p;
}

Problem arithmetic_problem(std::int64_t a, char op, std::int64_t b) {
  Problem p;
  p.kind = TaskKind::arithmetic;
  p.numbers = {a, b};
  p.op = op;
  p.target = op == '+' ? a + b : op == '-' ? a - b : a * b;
  p.solution = std::to_string(p.target);
  return p;
}

std::string wrap(const std::string& answer) { return "<think>let me see</think><answer>" + answer + "</answer>"; }

// Brute force: can all of `values`, each exactly once, be combined with + - * / (exact integer
// division, any sign) into `target`? Independent of the library's generator and parser. (Integer
// steps only: a subset of the rational expressions answers may use, enough for the generator's.)
bool solvable(std::vector<std::int64_t> values, std::int64_t target, std::set<std::vector<std::int64_t>>& seen) {
  if (values.size() == 1) return values[0] == target;
  std::sort(values.begin(), values.end());
  if (!seen.insert(values).second) return false;
  for (std::size_t i = 0; i < values.size(); ++i)
    for (std::size_t j = i + 1; j < values.size(); ++j) {
      const std::int64_t a = values[i], b = values[j];
      std::vector<std::int64_t> rest;
      for (std::size_t k = 0; k < values.size(); ++k)
        if (k != i && k != j) rest.push_back(values[k]);
      std::vector<std::int64_t> results = {a + b, a - b, b - a, a * b};
      if (b != 0 && a % b == 0) results.push_back(a / b);
      if (a != 0 && b % a == 0) results.push_back(b / a);
      for (const std::int64_t r : results) {
        rest.push_back(r);
        if (solvable(rest, target, seen)) return true;
        rest.pop_back();
      }
    }
  return false;
}

TEST(Tasks, SplitsAreDisjointOver100kSamples) {
  TaskMix mix;
  kiln::Generator train_gen{1, 0}, test_gen{2, 0};
  std::unordered_set<std::string> train, test;
  const int samples = kiln::testing::kSanitized ? 10000 : 100000;  // test_util.hpp
  for (int i = 0; i < samples; ++i) {
    const Problem p = sample(mix, train_gen, Split::train);
    ASSERT_EQ(split_of(p, 0.1), Split::train);
    train.insert(canonical(p));
  }
  for (int i = 0; i < samples; ++i) {
    const Problem p = sample(mix, test_gen, Split::test);
    ASSERT_EQ(split_of(p, 0.1), Split::test);
    test.insert(canonical(p));
  }
  for (const std::string& c : test) ASSERT_EQ(train.count(c), 0u) << c << " is in both splits";
  EXPECT_GT(test.size(), static_cast<std::size_t>(samples / 5));
  EXPECT_GT(train.size(), static_cast<std::size_t>(samples / 2));

  // A small problem space (1-digit sums and products: 110 problems) still splits cleanly, in
  // roughly the requested proportion, and any seed gives the same split.
  ArithmeticConfig small;
  small.min_digits = small.max_digits = 1;
  small.ops = "+*";
  small.test_fraction = 0.3;
  std::set<std::string> small_train, small_test;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    kiln::Generator g{seed, 0};
    for (int i = 0; i < 300; ++i) {
      small_train.insert(canonical(sample_arithmetic(small, g, Split::train)));
      small_test.insert(canonical(sample_arithmetic(small, g, Split::test)));
    }
  }
  for (const std::string& c : small_test) EXPECT_EQ(small_train.count(c), 0u) << c;
  EXPECT_EQ(small_train.size() + small_test.size(), 110u);
  EXPECT_GT(small_test.size(), 15u);
  EXPECT_LT(small_test.size(), 55u);

  // Commuted problems are the same problem: 3 + 4 and 4 + 3 fall in the same split.
  EXPECT_EQ(canonical(arithmetic_problem(3, '+', 4)), canonical(arithmetic_problem(4, '+', 3)));
  EXPECT_NE(canonical(arithmetic_problem(3, '-', 4)), canonical(arithmetic_problem(4, '-', 3)));
  EXPECT_EQ(canonical(countdown_problem({7, 3, 25}, 100)), canonical(countdown_problem({3, 25, 7}, 100)));
}

TEST(Tasks, DeterministicBySeed) {
  TaskMix mix;
  auto draw = [&](kiln::Generator g, int n, Split split) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.push_back(training_text(sample(mix, g, split)));
    return out;
  };
  EXPECT_EQ(draw({42, 0}, 500, Split::train), draw({42, 0}, 500, Split::train));
  EXPECT_EQ(draw({42, 0}, 500, Split::test), draw({42, 0}, 500, Split::test));
  EXPECT_NE(draw({42, 0}, 50, Split::train), draw({43, 0}, 50, Split::train));
  // Resuming from a saved (seed, offset) continues the same sequence.
  kiln::Generator g{42, 0};
  for (int i = 0; i < 100; ++i) sample(mix, g, Split::train);
  const kiln::Generator saved = g;
  const auto rest = draw(g, 100, Split::train);
  const auto full = draw({42, 0}, 200, Split::train);
  EXPECT_EQ(rest, std::vector<std::string>(full.begin() + 100, full.end()));
  EXPECT_EQ(draw(saved, 100, Split::train), rest);
  // Candidates are pure functions of (seed, index).
  EXPECT_EQ(canonical(make_countdown({}, 5, 77)), canonical(make_countdown({}, 5, 77)));
  EXPECT_EQ(canonical(make_arithmetic({}, 5, 77)), canonical(make_arithmetic({}, 5, 77)));
}

TEST(Tasks, DistinctHeldOutSets) {
  // 1-2 digit arithmetic: plain draws of the test split repeat problems (its 1-digit part is small).
  TaskMix mix;
  mix.countdown_fraction = 0.0;
  mix.arithmetic.max_digits = 2;
  kiln::Generator plain{7, 0};
  std::vector<std::string> draws;
  std::set<std::string> unique;
  for (int i = 0; i < 200; ++i) {
    draws.push_back(canonical(sample(mix, plain, Split::test)));
    unique.insert(draws.back());
  }
  EXPECT_LT(unique.size(), 200u) << "expected repeats among 200 plain draws";
  // sample_distinct: the same draws in the same order with the repeats skipped, all in the split.
  kiln::Generator g{7, 0};
  const std::vector<Problem> distinct = sample_distinct(mix, g, Split::test, 200);
  ASSERT_EQ(distinct.size(), 200u);
  std::set<std::string> seen;
  std::vector<std::string> first_of_each;
  for (const std::string& c : draws)
    if (seen.insert(c).second) first_of_each.push_back(c);
  seen.clear();
  for (std::size_t i = 0; i < distinct.size(); ++i) {
    const std::string c = canonical(distinct[i]);
    EXPECT_TRUE(seen.insert(c).second) << "repeated: " << c;
    EXPECT_EQ(split_of(distinct[i], mix.arithmetic.test_fraction), Split::test) << c;
    if (i < first_of_each.size()) {
      EXPECT_EQ(c, first_of_each[i]) << i;
    }
  }
  kiln::Generator again{7, 0};
  const std::vector<Problem> twice = sample_distinct(mix, again, Split::test, 200);
  for (std::size_t i = 0; i < twice.size(); ++i) EXPECT_EQ(canonical(twice[i]), canonical(distinct[i]));
  EXPECT_TRUE(sample_distinct(mix, again, Split::test, 0).empty());
  // 1-digit sums: 55 problems up to commutation, about a tenth in the test split. Asking for more
  // than the split holds is an error that says how many there are.
  mix.arithmetic.max_digits = 1;
  mix.arithmetic.ops = "+";
  kiln::Generator small{7, 0};
  EXPECT_KILN_ERROR(sample_distinct(mix, small, Split::test, 40), "tasks::sample_distinct", "asked for 40 distinct");
  EXPECT_KILN_ERROR(sample_distinct(mix, small, Split::test, -1), "tasks::sample_distinct", "n >= 0");
}

TEST(Tasks, GeneratedProblemsRespectTheirConfig) {
  ArithmeticConfig ac;
  ac.min_digits = 2;
  ac.max_digits = 4;
  kiln::Generator g{3, 0};
  std::map<char, int> ops;
  for (int i = 0; i < 3000; ++i) {
    const Problem p = sample_arithmetic(ac, g, Split::train);
    ASSERT_EQ(p.numbers.size(), 2u);
    for (const std::int64_t x : p.numbers) {
      ASSERT_GE(x, 10);
      ASSERT_LE(x, 9999);
    }
    ++ops[p.op];
    ASSERT_EQ(p.solution, std::to_string(p.target));
  }
  EXPECT_EQ(ops.size(), 3u);
  ac.min_digits = ac.max_digits = 9;
  ac.ops = "*";
  const Problem big = sample_arithmetic(ac, g, Split::train);
  EXPECT_EQ(big.target, big.numbers[0] * big.numbers[1]);
  EXPECT_GE(big.target, 100000000LL * 100000000LL);

  EXPECT_KILN_ERROR(make_arithmetic({0, 3, "+", 0.1}, 1, 0), "tasks::make_arithmetic", "digits");
  EXPECT_KILN_ERROR(make_arithmetic({1, 10, "+", 0.1}, 1, 0), "tasks::make_arithmetic", "10");
  EXPECT_KILN_ERROR(make_arithmetic({1, 3, "+/", 0.1}, 1, 0), "tasks::make_arithmetic", "+/");
  ArithmeticConfig no_test;
  no_test.test_fraction = 0.0;
  EXPECT_KILN_ERROR(sample_arithmetic(no_test, g, Split::test), "tasks::sample_arithmetic", "test_fraction");
  CountdownConfig bad;
  bad.min_numbers = 1;
  EXPECT_KILN_ERROR(make_countdown(bad, 1, 0), "tasks::make_countdown", "min_numbers");
}

TEST(Tasks, EveryCountdownProblemIsSolvable) {
  for (auto [lo, hi, count] : std::vector<std::tuple<int, int, int>>{{3, 4, 3000}, {5, 5, 500}, {6, 6, 200}}) {
    if (kiln::testing::kSanitized) count /= 10;  // test_util.hpp
    CountdownConfig cfg;
    cfg.min_numbers = lo;
    cfg.max_numbers = hi;
    kiln::Generator g{static_cast<std::uint64_t>(lo * 10 + hi), 0};
    for (int i = 0; i < count; ++i) {
      const Problem p = sample_countdown(cfg, g, i % 2 ? Split::test : Split::train);
      ASSERT_GE(p.numbers.size(), static_cast<std::size_t>(lo));
      ASSERT_LE(p.numbers.size(), static_cast<std::size_t>(hi));
      ASSERT_TRUE(std::is_sorted(p.numbers.begin(), p.numbers.end()));
      for (const std::int64_t x : p.numbers) ASSERT_TRUE(x >= 1 && x <= cfg.max_number);
      ASSERT_TRUE(p.target >= cfg.min_target && p.target <= cfg.max_target) << p.target;
      ASSERT_EQ(std::count(p.numbers.begin(), p.numbers.end(), p.target), 0);
      std::set<std::vector<std::int64_t>> seen;
      ASSERT_TRUE(solvable(p.numbers, p.target, seen)) << canonical(p);
      std::string reason;
      ASSERT_TRUE(check_answer(p, p.solution, &reason)) << canonical(p) << ": " << p.solution << ": " << reason;
      // The solution uses every number exactly once (its digit runs, sorted, are the numbers).
      std::vector<std::int64_t> used;
      static const std::regex digits(R"(\d+)");
      for (auto it = std::sregex_iterator(p.solution.begin(), p.solution.end(), digits); it != std::sregex_iterator(); ++it)
        used.push_back(std::stoll((*it)[0]));
      std::sort(used.begin(), used.end());
      ASSERT_EQ(used, p.numbers) << p.solution;
    }
  }
}

TEST(Tasks, VerifierAcceptsCorrectCountdownAnswers) {
  const Problem p = countdown_problem({3, 7, 25, 50}, 128, "7 * 25 - 50 + 3");
  EXPECT_EQ(prompt(p), "Countdown: use 3 7 25 50 to make 128.\n");
  for (const std::string answer : {"7 * 25 - 50 + 3", "(25 * 7) - 50 + 3", "3+25*7-50", "3 + (7 * 25 - 50)",
                                   "25 \xC3\x97 7 \xE2\x88\x92 50 + 3", "7*25-50+3 = 128", " ((7)) * 25 - (50 - 3) "}) {
    const Reward r = verify(p, wrap(answer));
    EXPECT_EQ(r.format, 1.0) << answer;
    EXPECT_EQ(r.accuracy, 1.0) << answer << ": " << r.reason;
  }
  // Whitespace around the blocks is fine; the think block may hold anything but tags.
  EXPECT_EQ(verify(p, "\n <think>\n50 + 25 = 75? no.\n</think>\n\n<answer>7 * 25 - 50 + 3</answer>\n").accuracy, 1.0);
  // Division; every number must be used, exactly once.
  const Problem q = countdown_problem({2, 6, 9, 75}, 50, "75 / (9 - 6) * 2");
  EXPECT_EQ(verify(q, wrap("75 / (9 - 6) * 2")).accuracy, 1.0);
  EXPECT_EQ(verify(q, wrap("75 \xC3\xB7 (9 - 6) \xC3\x97 2")).accuracy, 1.0);
  EXPECT_EQ(verify(q, wrap("75 / (9 - 6)")).accuracy, 0.0);                  // 25: 2 not used
  EXPECT_EQ(verify(q, wrap("(75 - 9 - 6 + 2 * 2) / 2")).accuracy, 0.0);      // 2 used twice
  EXPECT_EQ(verify(q, wrap("75 / (9 - 6) * 2 * 2 / 2")).accuracy, 0.0);      // 50, but 2 used 3 times
  // A number given twice is used twice.
  const Problem twice = countdown_problem({5, 5, 10}, 35, "");
  EXPECT_EQ(verify(twice, wrap("5 * 5 + 10")).accuracy, 1.0);
  EXPECT_EQ(verify(twice, wrap("5 * 5 + 10 + 5 - 5")).accuracy, 0.0);
  EXPECT_EQ(verify(twice, wrap("(5 + 10) * 5 - 40")).accuracy, 0.0);
  // Exact rationals: intermediate fractions are fine when the final value is the target.
  const Problem frac = countdown_problem({1, 2, 3, 3, 6}, 6, "");
  EXPECT_EQ(verify(frac, wrap("(1 / 3 + 2 / 3) * 6")).accuracy, 1.0);          // (1/3 + 2/3) * 6 = 6
  EXPECT_EQ(verify(frac, wrap("(1 / 3 + 2 / 3) * 6 = 6")).accuracy, 1.0);
  EXPECT_EQ(verify(frac, wrap("1 / 3 * 6 + 2 / 3")).accuracy, 0.0);            // 2 + 2/3
  const Problem half = countdown_problem({2, 4, 7}, 14, "");
  EXPECT_EQ(verify(half, wrap("7 / 2 * 4")).accuracy, 1.0);                    // 3.5 * 4
  EXPECT_EQ(verify(half, wrap("4 / (2 / 7)")).accuracy, 1.0);                  // 4 * 7/2
  EXPECT_EQ(verify(half, wrap("7 / 2 + 4")).accuracy, 0.0);                    // 15/2
  // A near miss that floating point would accept: 1/3 is not 0.333333333333333333.
  const Problem third = countdown_problem({1, 3, 999999999999999999}, 333333333333333333, "");
  EXPECT_EQ(verify(third, wrap("1 / 3 * 999999999999999999")).accuracy, 1.0);
  EXPECT_EQ(verify(third, wrap("999999999999999999 / 3 * 1")).accuracy, 1.0);
  const Problem third_off = countdown_problem({1, 3, 999999999999999998}, 333333333333333333, "");
  EXPECT_EQ(verify(third_off, wrap("1 / 3 * 999999999999999998")).accuracy, 0.0);
  // Negative intermediate values are allowed.
  const Problem neg = countdown_problem({3, 10, 20}, 140, "");
  EXPECT_EQ(verify(neg, wrap("(3 - 10) * (0 + 20) * -1")).accuracy, 0.0);  // 0 not given, unary minus
  EXPECT_EQ(verify(neg, wrap("(10 - 3) * 20")).accuracy, 1.0);
  const Problem neg2 = countdown_problem({3, 10, 20}, 13, "");
  EXPECT_EQ(verify(neg2, wrap("(3 - 10) + 20")).accuracy, 1.0);
}

TEST(Tasks, VerifierRejectsWrongCountdownAnswers) {
  const Problem p = countdown_problem({3, 7, 25, 50}, 128, "7 * 25 - 50 + 3");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"7 * 25 - 50 + 4", "4 is not one of the numbers"},
      {"7 * 25 - 50", "not every number is used: 3 left over"},
      {"7 * 25 + 3", "not every number is used: 50 left over"},
      {"50 + 25", "not every number is used: 3 7 left over"},
      {"7 * 25 - 50 - 3", "makes 122"},
      {"50 + 50 + 25 + 3", "50 is used more often"},
      {"50 + 7 * 25 - 50 + 3", "50 is used more often"},
      {"7 * 25 - 50 + 3 = 129", "not the target"},
      {"(7 * 25 - 50 + 3) / (7 - 7)", "division by zero"},
      {"(7 * 25 - 50 + 3) / 0", "division by zero"},
      {"7 * 25 - 50 + 3 + 0", "0 is not one of the numbers"},
      {"(50 - 25) / (7 - 3)", "makes 25/4"},          // exactly, not 6
      {"(25 - 50) / 7 * 3", "makes -75/7"},          // -25/7 * 3
      {"(3 - 50) / 7 * 25", "makes -1175/7"},
      {"-3 + 7 * 25 - 50", "unary minus"},
      {"99999999999999999999 - 3", "too large"},
      {"999999999999999999 * 999999999999999999", "too large"},
      {"3 / 999999999999999999 / 999999999999999999", "too large"},  // the denominator overflows
      {std::string(5000, '7') + " + 3", "longer than 1000 bytes"},   // a 5000-digit literal
      {std::string(500, '7') + " + 3", "too large"},                 // a 500-digit literal
      {"0000000000000000003 + 7 * 25 - 50", "too large"},            // 19 digits, even if small
      {"7 * 25 - 50 +", "unexpected end"},
      {"7 * 25 - 50 + 3)", "unexpected ')'"},
      {"((7 * 25 - 50 + 3", "missing ')'"},
      {"7 25 50 3", "unexpected '2'"},
      {"seven", "unexpected 's'"},
      {"", "empty answer"},
      {"   ", "empty answer"},
      {"7 ** 25", "unexpected '*'"},
      {"7 * 25 - 50 + 3.0", "unexpected '.'"},
      {std::string(70, '(') + "3" + std::string(70, ')'), "nested too deep"},
      {std::string(2000, '1'), "longer than 1000"},
      {"7 * 25 - 50 + 3 = 128 = 128", "not the target"},
      {"\xFF\xFE", "unexpected byte 255"},
  };
  for (const auto& [answer, why] : cases) {
    Reward r;
    EXPECT_NO_THROW(r = verify(p, wrap(answer))) << answer;
    EXPECT_EQ(r.format, 1.0) << answer;
    EXPECT_EQ(r.accuracy, 0.0) << answer;
    EXPECT_NE(r.reason.find(why), std::string::npos) << answer << ": reason \"" << r.reason << "\" lacks \"" << why << "\"";
  }
  // INT64_MIN is reachable (-2^62 * 2); dividing it by -1 would overflow, and is reported.
  const Evaluation lowest = evaluate("(0 - 2147483648 * 2147483648) * 2");
  ASSERT_TRUE(lowest.ok) << lowest.error;
  EXPECT_EQ(lowest.value, Rational{std::numeric_limits<std::int64_t>::min()});
  EXPECT_EQ(lowest.literals, (std::vector<std::int64_t>{0, 2147483648, 2147483648, 2}));
  const Evaluation e = evaluate("(0 - 2147483648 * 2147483648) * 2 / (1 - 2)");
  EXPECT_FALSE(e.ok);
  EXPECT_EQ(e.error, "number too large");
  const Problem big = countdown_problem({0, 1, 2, 2147483648, 2147483648}, 5);
  EXPECT_EQ(verify(big, wrap("(0 - 2147483648 * 2147483648) * 2 / (1 - 2)")).accuracy, 0.0);
}

TEST(Tasks, ExactRationalEvaluation) {
  auto value = [](const std::string& text) {
    const Evaluation e = evaluate(text);
    EXPECT_TRUE(e.ok) << text << ": " << e.error;
    return e.value;
  };
  // Hand-computed, in lowest terms with a positive denominator.
  EXPECT_EQ(value("1 / 3"), (Rational{1, 3}));
  EXPECT_EQ(value("2 / 6"), (Rational{1, 3}));
  EXPECT_EQ(value("(1 / 3 + 2 / 3) * 6"), Rational{6});
  EXPECT_EQ(value("1 - 4 / 6"), (Rational{1, 3}));
  EXPECT_EQ(value("(1 - 3) / 4"), (Rational{-1, 2}));
  EXPECT_EQ(value("3 / (1 - 7)"), (Rational{-1, 2}));        // the sign moves to the numerator
  EXPECT_EQ(value("(2 - 5) / (1 - 7)"), (Rational{1, 2}));   // negative over negative
  EXPECT_EQ(value("1 / (1 / 7)"), Rational{7});
  EXPECT_EQ(value("1 / 2 / 2 / 2"), (Rational{1, 8}));       // left-associative
  EXPECT_EQ(value("8 - 2 - 1"), Rational{5});
  EXPECT_EQ(value("0 / 5"), Rational{0});
  EXPECT_EQ(value("0 * (1 / 7)"), Rational{0});
  EXPECT_TRUE(value("7 / 1").is_integer());
  EXPECT_FALSE(value("7 / 2").is_integer());
  EXPECT_EQ(kiln::str(Rational{-75, 7}), "-75/7");
  EXPECT_EQ(kiln::str(Rational{14}), "14");
  EXPECT_LT((Rational{1, 3}), (Rational{1, 2}));
  EXPECT_LT((Rational{-1, 2}), (Rational{-1, 3}));
  // The steps are exact too.
  tasks_detail::Parser parser("7 / 2 * 4");
  EXPECT_EQ(parser.parse(), Rational{14});
  ASSERT_EQ(parser.steps.size(), 2u);
  EXPECT_EQ(parser.steps[0].result, (Rational{7, 2}));
  EXPECT_EQ(parser.steps[1].lhs, (Rational{7, 2}));
  // Large values that fit, and values whose numerator or denominator does not.
  const std::string big = "999999999999999999";  // 10^18 - 1
  EXPECT_EQ(value(big + " * 9"), Rational{8999999999999999991});
  EXPECT_EQ(value("1 / " + big + " * " + big), Rational{1});
  EXPECT_EQ(value(big + " / " + big + " / " + big), (Rational{1, 999999999999999999}));
  EXPECT_EQ(value("1 / " + big + " - 1 / " + big), Rational{0});  // a huge common denominator cancels
  for (const std::string& text : {big + " * 10", "1 / " + big + " / 10", "1 / " + big + " + 1 / 999999999999999998",
                                 big + " * " + big + " / " + big, "0 - " + big + " * 10", "1 / (0 - " + big + ") / 10",
                                 "(" + big + " * 9 + " + big + ") * 2"}) {
    const Evaluation e = evaluate(text);
    EXPECT_FALSE(e.ok) << text << " = " << e.value;
    EXPECT_EQ(e.error, "number too large") << text;
  }
  for (const char* text : {"1 / 0", "1 / (3 - 3)", "1 / (1 / 2 - 2 / 4)", "(1 / 0) * 0"}) {
    const Evaluation e = evaluate(text);
    EXPECT_FALSE(e.ok) << text;
    EXPECT_EQ(e.error, "division by zero") << text;
  }
  // Nesting: 64 levels are fine, 65 are not (reported, no deep recursion).
  EXPECT_EQ(value(std::string(64, '(') + "5" + std::string(64, ')')), Rational{5});
  EXPECT_EQ(evaluate(std::string(65, '(') + "5" + std::string(65, ')')).error, "parentheses nested too deep");
  EXPECT_EQ(evaluate(std::string(999, '(')).error, "parentheses nested too deep");
}

TEST(Tasks, LastAnswerBlock) {
  auto last = [](std::string_view text) { return last_answer(text).value_or("<none>"); };
  EXPECT_EQ(last("<answer>1</answer>"), "1");
  EXPECT_EQ(last("<think>a</think><answer> 12 </answer>\n"), " 12 ");
  EXPECT_EQ(last("<answer></answer>"), "");
  EXPECT_EQ(last("<answer>1</answer><answer>2</answer>"), "2");          // several: the last
  EXPECT_EQ(last("<answer>1</answer> text <answer>2"), "1");             // the last one is incomplete
  EXPECT_EQ(last("<answer>1<answer>2</answer>"), "2");                   // an open tag restarts the block
  EXPECT_EQ(last("<answer>1</answer></answer>"), "1");                   // a stray close closes nothing
  EXPECT_EQ(last("<answer><answer><answer>3</answer></answer>"), "3");
  EXPECT_EQ(last("<answer>a<think>b</think>c</answer>"), "a<think>b</think>c");
  EXPECT_EQ(last("<answer>x</answer><think>later</think>"), "x");
  EXPECT_EQ(last("</answer><answer>"), "<none>");
  EXPECT_EQ(last(""), "<none>");
  EXPECT_EQ(last("no tags at all"), "<none>");
  EXPECT_EQ(last("<ANSWER>1</ANSWER>"), "<none>");                       // tags are lower case
  EXPECT_EQ(last("<answer 1</answer>"), "<none>");
  EXPECT_EQ(last(std::string("<answer>\0\x01\xFF</answer>", 20)), std::string("\0\x01\xFF", 3));
  // On a well-formed completion it is the answer block.
  const std::string good = "<think>hmm</think>\n<answer>7 * 25 - 50 + 3</answer>\n";
  ASSERT_TRUE(parse_completion(good).ok);
  EXPECT_EQ(last(good), parse_completion(good).answer);
  // Long adversarial inputs are scanned in one pass.
  std::string opens;
  for (int i = 0; i < 25000; ++i) opens += "<answer>";                 // 200k characters
  EXPECT_FALSE(last_answer(opens).has_value());
  EXPECT_EQ(last(opens + "9</answer>"), "9");
  std::string closes;
  for (int i = 0; i < 25000; ++i) closes += "</answer>";
  EXPECT_EQ(last("<answer>8" + closes), "8");
  EXPECT_FALSE(last_answer(closes + "<answer>").has_value());
  EXPECT_EQ(last(std::string(200000, '<') + "<answer>7</answer>"), "7");
}

TEST(Tasks, VerifierArithmetic) {
  const Problem p = arithmetic_problem(12, '*', 34);
  EXPECT_EQ(prompt(p), "Arithmetic: compute 12 * 34.\n");
  EXPECT_EQ(verify(p, wrap("408")).accuracy, 1.0);
  EXPECT_EQ(verify(p, wrap(" 408\n")).accuracy, 1.0);
  for (const std::string wrong : {"0408", "408.0", "-408", "400 + 8", "407", "4 08", "", "408408"}) {
    const Reward r = verify(p, wrap(wrong));
    EXPECT_EQ(r.format, 1.0) << wrong;
    EXPECT_EQ(r.accuracy, 0.0) << wrong;
  }
  const Problem n = arithmetic_problem(3, '-', 10);
  EXPECT_EQ(verify(n, wrap("-7")).accuracy, 1.0);
  EXPECT_EQ(verify(n, wrap("7")).accuracy, 0.0);
}

TEST(Tasks, MalformedOutputsGetNoReward) {
  const Problem p = countdown_problem({3, 7, 25, 50}, 128, "7 * 25 - 50 + 3");
  const std::string a = "7 * 25 - 50 + 3";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "does not start with <think>"},
      {a, "does not start with <think>"},
      {"<answer>" + a + "</answer>", "does not start with <think>"},
      {"<think>hmm</think>", "no <answer>"},
      {"<think>hmm</think>" + a, "no <answer>"},
      {"<think>hmm<answer>" + a + "</answer>", "missing </think>"},
      {"<think>hmm</think><answer>" + a, "missing </answer>"},
      {"<think><think>hmm</think><answer>" + a + "</answer>", "a tag inside the think block"},
      {"<think>hmm</think><answer><answer>" + a + "</answer>", "a tag inside the answer block"},
      {"<think>hmm</think><answer>" + a + "</answer></answer>", "text after </answer>"},
      {"<think>hmm</think><answer>" + a + "</answer> and more", "text after </answer>"},
      {"<think>hmm</think> x <answer>" + a + "</answer>", "no <answer>"},
      {"<think>hmm</think><answer>" + a + "</answer><think>again</think>", "text after </answer>"},
      {"<answer>" + a + "</answer><think>hmm</think>", "does not start with <think>"},
      {"<THINK>hmm</THINK><ANSWER>" + a + "</ANSWER>", "does not start with <think>"},
  };
  for (const auto& [text, why] : cases) {
    Reward r;
    EXPECT_NO_THROW(r = verify(p, text)) << text;
    EXPECT_EQ(r.format, 0.0) << text;
    EXPECT_EQ(r.accuracy, 0.0) << text;
    EXPECT_NE(r.reason.find(why), std::string::npos) << text << ": reason \"" << r.reason << "\"";
  }
}

TEST(Tasks, VerifierNeverCrashesOnGarbage) {
  TaskMix mix;
  kiln::Generator g{99, 0};
  std::mt19937_64 rng(17);
  const std::string alphabet = "0123456789+-*/()= <>/thinkanswer\xC3\x97\xE2\x88\x92\n";
  int accepted = 0;
  for (int k = 0; k < 20000; ++k) {
    const Problem p = sample(mix, g, Split::train);
    std::string text = worked_solution(p);
    // Mutate the correct completion: delete, insert or replace a few bytes.
    const int edits = static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const std::size_t pos = rng() % text.size();
      switch (rng() % 3) {
        case 0: text.erase(pos, 1 + rng() % 3); break;
        case 1: text.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
        default: text[pos] = static_cast<char>(rng() & 0xFF);
      }
    }
    if (k % 10 == 0) {  // pure noise
      text.resize(rng() % 300);
      for (char& c : text) c = static_cast<char>(rng() & 0xFF);
    }
    Reward r;
    ASSERT_NO_THROW(r = verify(p, text)) << text;
    ASSERT_TRUE(r.format == 0.0 || r.format == 1.0);
    ASSERT_TRUE(r.accuracy == 0.0 || r.accuracy == 1.0);
    if (r.accuracy == 1.0) {
      ASSERT_EQ(r.format, 1.0);
      ++accepted;
    }
    if (edits == 0 && k % 10 != 0) {
      ASSERT_EQ(r.accuracy, 1.0) << text << ": " << r.reason;
    }
  }
  EXPECT_GT(accepted, 3000);
  // Large inputs.
  const Problem p = countdown_problem({3, 7, 25, 50}, 128, "7 * 25 - 50 + 3");
  EXPECT_EQ(verify(p, std::string(1 << 20, '(')).accuracy, 0.0);
  EXPECT_EQ(verify(p, wrap(std::string(100000, '('))).accuracy, 0.0);
  EXPECT_EQ(verify(p, "<think>" + std::string(1 << 20, 'x') + "</think><answer>7*25-50+3</answer>").accuracy, 1.0);
}

// Every "x op y = z" and "x op y op w = z" claim in the worked solutions holds.
void expect_true_claims(const std::string& text) {
  static const std::regex claim(R"((\d+) ([-+*/]) (\d+)(?: ([-+]) (\d+))? = (-?\d+))");
  int claims = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), claim); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    auto apply = [](std::int64_t a, char op, std::int64_t b) {
      return op == '+' ? a + b : op == '-' ? a - b : op == '*' ? a * b : a / b;
    };
    std::int64_t v = apply(std::stoll(m[1]), m[2].str()[0], std::stoll(m[3]));
    if (m[4].matched) v = apply(v, m[4].str()[0], std::stoll(m[5]));
    EXPECT_EQ(v, std::stoll(m[6])) << "false claim \"" << m[0] << "\" in\n" << text;
    ++claims;
  }
  EXPECT_GT(claims, 0) << text;
}

TEST(Tasks, WorkedSolutionsAreCorrect) {
  EXPECT_EQ(worked_solution(arithmetic_problem(478, '+', 365)),
            "<think>Add 478 and 365 column by column from the right.\n"
            "8 + 5 = 13, write 3, carry 1.\n"
            "7 + 6 + 1 = 14, write 4, carry 1.\n"
            "4 + 3 + 1 = 8, write 8.\n"
            "So 478 + 365 = 843.</think><answer>843</answer>");
  EXPECT_EQ(worked_solution(arithmetic_problem(402, '-', 17)),
            "<think>Subtract 17 from 402 column by column from the right.\n"
            "2 - 7 is negative, borrow 10: 12 - 7 = 5, write 5.\n"
            "0 - 1 - 1 is negative, borrow 10: 10 - 1 - 1 = 8, write 8.\n"
            "4 - 1 - 0 = 3, write 3.\n"
            "So 402 - 17 = 385.</think><answer>385</answer>");
  EXPECT_EQ(worked_solution(arithmetic_problem(47, '*', 36)),
            "<think>Multiply 47 by each digit of 36 from the right.\n"
            "47 * 6: 7 * 6 = 42, write 2, carry 4; 4 * 6 + 4 = 28, write 28. So 47 * 6 = 282.\n"
            "47 * 3: 7 * 3 = 21, write 1, carry 2; 4 * 3 + 2 = 14, write 14. So 47 * 3 = 141.\n"
            "Shift by 1: 1410.\n"
            "Add the partial products.\n"
            "282 + 1410 = 1692.\n"
            "So 47 * 36 = 1692.</think><answer>1692</answer>");
  const std::string cd = worked_solution(countdown_problem({3, 7, 25, 50}, 128, "7 * 25 - 50 + 3"));
  EXPECT_NE(cd.find("Try 7 * 25 = 175, left 3 50 175.\n175 - 50 = 125, left 3 125.\n125 + 3 = 128. That makes 128.</think>"
                    "<answer>7 * 25 - 50 + 3</answer>"),
            std::string::npos)
      << cd;

  TaskMix mix;
  mix.arithmetic.max_digits = 6;
  kiln::Generator g{5, 0};
  for (int k = 0; k < 3000; ++k) {
    const Problem p = sample(mix, g, k % 3 ? Split::train : Split::test);
    const std::string text = training_text(p);
    ASSERT_EQ(text.rfind(prompt(p), 0), 0u);
    const std::string completion = text.substr(prompt(p).size());
    const Reward r = verify(p, completion);
    ASSERT_EQ(r.accuracy, 1.0) << text << "\n" << r.reason;
    expect_true_claims(completion);
    if (HasFailure()) break;
  }
}

TEST(Tasks, WorkedCorpus) {
  TaskMix mix;
  kiln::Generator a{8, 0}, b{8, 0};
  const auto docs = worked_corpus(mix, a, 400);
  EXPECT_EQ(docs, worked_corpus(mix, b, 400));
  ASSERT_EQ(docs.size(), 400u);
  int countdown = 0;
  for (const std::string& d : docs) {
    countdown += d.rfind("Countdown: ", 0) == 0;
    EXPECT_TRUE(d.rfind("Countdown: ", 0) == 0 || d.rfind("Arithmetic: ", 0) == 0) << d;
    EXPECT_NE(d.find("\n<think>"), std::string::npos);
  }
  EXPECT_GT(countdown, 120);
  EXPECT_LT(countdown, 280);
  mix.countdown_fraction = 0.0;
  for (const std::string& d : worked_corpus(mix, a, 50)) EXPECT_EQ(d.rfind("Arithmetic: ", 0), 0u);
  mix.countdown_fraction = 1.5;
  EXPECT_KILN_ERROR(worked_corpus(mix, a, 1), "tasks::sample", "countdown_fraction");
}

// A corpus with direct answers: the given share answers at once, every document still earns full
// reward, and direct_fraction 0 leaves the corpus as it was.
TEST(Tasks, WorkedCorpusWithDirectAnswers) {
  TaskMix mix;
  kiln::Generator a{8, 0}, b{8, 0}, c{8, 0};
  EXPECT_EQ(worked_corpus(mix, a, 100, Split::train, 0.0), worked_corpus(mix, b, 100));
  const auto docs = worked_corpus(mix, c, 1000, Split::train, 0.3);
  int direct = 0;
  for (const std::string& d : docs) {
    const std::size_t newline = d.find('\n');
    ASSERT_NE(newline, std::string::npos) << d;
    const std::string completion = d.substr(newline + 1);
    direct += completion.rfind("<think></think><answer>", 0) == 0;
    EXPECT_TRUE(parse_completion(completion).ok) << d;
  }
  // Binomial(1000, 0.3): mean 300, sd 14.5; the bounds are 5 sd out.
  EXPECT_GT(direct, 227);
  EXPECT_LT(direct, 373);
  kiln::Generator d{9, 0};
  const Problem p = sample(mix, d, Split::test);
  EXPECT_EQ(direct_solution(p), "<think></think><answer>" + p.solution + "</answer>");
  EXPECT_EQ(verify(p, direct_solution(p)).accuracy, 1.0);
  EXPECT_KILN_ERROR(worked_corpus(mix, d, 1, Split::train, 1.5), "tasks::worked_corpus", "direct_fraction");
}

}  // namespace
