// GRPO rewards (rl/rewards.hpp): the R1-Zero prompt, the format and accuracy rewards on
// hand-computed completions, the last-answer-block rule (several, nested, repeated tags), every
// generated problem's own solution scoring 1.0 while mutations of it (a number dropped, a number
// used twice, an operator changed) score 0.1 (checked against an independent exact evaluator),
// adversarial strings (overflow, division by zero, 5000-digit numbers, deep nesting, 200k
// characters of repeated tags or garbage, non-ASCII and control bytes), agreement with
// data::verify on fuzzed completions, and RewardSet (weights, groups, stats, errors).
//
// Bounded time: every reward is linear in the completion's length (see rl/rewards.hpp); the long
// adversarial inputs below (200k to 2M characters of the patterns that would make a naive search
// quadratic) finish in milliseconds, and would take hours if any scan were quadratic, so a
// regression shows as a test timeout rather than as a flaky wall-clock assertion.
#include <kiln/rl/rewards.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace kiln::data;
using kiln::rl::Grade;
using kiln::rl::Outcome;
using kiln::rl::RewardScores;

Problem countdown_problem(std::vector<std::int64_t> numbers, std::int64_t target) {
  Problem p;
  p.kind = TaskKind::countdown;
  p.numbers = std::move(numbers);
  p.target = target;
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

// A string literal with its embedded NUL bytes.
template <std::size_t N>
std::string bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

std::string wrap(const std::string& answer) { return "<think>let me see</think>\n<answer>" + answer + "</answer>"; }

double accuracy(const Problem& p, std::string_view completion) { return kiln::rl::accuracy_score(p, completion); }
double format(std::string_view completion) { return kiln::rl::format_score(completion); }

// ---- an independent exact evaluator for the ASCII expressions the tests build -----------------

__extension__ using i128 = __int128;

struct Frac {
  i128 n, d;  // d > 0, lowest terms
};

i128 gcd128(i128 a, i128 b) {
  if (a < 0) a = -a;
  while (b != 0) {
    const i128 t = a % b;
    a = b;
    b = t < 0 ? -t : t;
  }
  return a;
}

Frac frac(i128 n, i128 d) {
  if (d < 0) n = -n, d = -d;
  const i128 g = gcd128(n, d);
  return {n / g, d / g};
}

// Shunting-yard over tokens (digits, + - * /, parentheses): a different algorithm from the
// library's recursive descent. nullopt on division by zero.
std::optional<Frac> reference_value(const std::string& s) {
  std::vector<Frac> vals;
  std::vector<char> ops;
  bool div_zero = false;
  auto prec = [](char op) { return op == '+' || op == '-' ? 1 : 2; };
  auto reduce = [&] {
    const char op = ops.back();
    ops.pop_back();
    const Frac b = vals.back();
    vals.pop_back();
    const Frac a = vals.back();
    vals.pop_back();
    if (op == '+') vals.push_back(frac(a.n * b.d + b.n * a.d, a.d * b.d));
    if (op == '-') vals.push_back(frac(a.n * b.d - b.n * a.d, a.d * b.d));
    if (op == '*') vals.push_back(frac(a.n * b.n, a.d * b.d));
    if (op == '/') {
      if (b.n == 0) {
        div_zero = true;
        vals.push_back({0, 1});
      } else {
        vals.push_back(frac(a.n * b.d, a.d * b.n));
      }
    }
  };
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == ' ') continue;
    if (c >= '0' && c <= '9') {
      i128 v = 0;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') v = v * 10 + (s[i++] - '0');
      --i;
      vals.push_back({v, 1});
    } else if (c == '(') {
      ops.push_back(c);
    } else if (c == ')') {
      while (ops.back() != '(') reduce();
      ops.pop_back();
    } else {
      while (!ops.empty() && ops.back() != '(' && prec(ops.back()) >= prec(c)) reduce();
      ops.push_back(c);
    }
  }
  while (!ops.empty()) reduce();
  if (div_zero) return std::nullopt;
  return vals.at(0);
}

// The tokens of a generated (ASCII) expression: numbers, operators and parentheses.
std::vector<std::string> tokens(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ' ') continue;
    if (s[i] >= '0' && s[i] <= '9') {
      std::size_t j = i;
      while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
      out.push_back(s.substr(i, j - i));
      i = j - 1;
    } else {
      out.emplace_back(1, s[i]);
    }
  }
  return out;
}

std::string untokens(const std::vector<std::string>& t) {
  std::string s;
  for (const std::string& x : t) s += (s.empty() ? "" : " ") + x;
  return s;
}

bool is_number(const std::string& t) { return !t.empty() && t[0] >= '0' && t[0] <= '9'; }
bool is_op(const std::string& t) { return t == "+" || t == "-" || t == "*" || t == "/"; }

// ---- tests ------------------------------------------------------------------------------------

TEST(Rewards, R1ZeroPrompt) {
  const Problem a = arithmetic_problem(12, '*', 34);
  EXPECT_EQ(kiln::rl::r1_zero_prompt(a),
            "Reason in <think> </think>, then answer in <answer> </answer>.\nArithmetic: compute 12 * 34.\n");
  const Problem c = countdown_problem({3, 7, 25, 50}, 128);
  EXPECT_EQ(kiln::rl::r1_zero_prompt(c),
            "Reason in <think> </think>, then answer in <answer> </answer>.\nCountdown: use 3 7 25 50 to make 128.\n");
  // The prompt ends with the task line; the completion opens the think block itself.
  static_assert(!kiln::rl::r1_zero_prompt_ends_with_think);
  EXPECT_FALSE(kiln::rl::r1_zero_prompt(c).ends_with("<think>"));
  EXPECT_TRUE(kiln::rl::r1_zero_prompt(c).ends_with(prompt(c)));
  // The pretraining documents continue the task line with exactly such a completion, which gets
  // full marks.
  TaskMix mix;
  kiln::Generator g{11, 0};
  for (int k = 0; k < 300; ++k) {
    const Problem p = sample(mix, g, Split::train);
    const std::string doc = training_text(p);
    ASSERT_EQ(doc.rfind(prompt(p), 0), 0u);
    const std::string completion = doc.substr(prompt(p).size());
    ASSERT_TRUE(completion.starts_with("<think>")) << completion;
    ASSERT_TRUE(completion.ends_with("</answer>")) << completion;
    ASSERT_EQ(format(completion), 1.0) << completion;
    ASSERT_EQ(accuracy(p, completion), 1.0) << completion << "\n" << kiln::rl::grade(p, completion).reason;
  }
}

TEST(Rewards, ArithmeticHandComputed) {
  const Problem p = arithmetic_problem(12, '*', 34);  // 408
  struct Case {
    std::string completion;
    double format, accuracy;
  };
  const std::vector<Case> cases = {
      {"<think>12 * 34 = 408</think><answer>408</answer>", 1.0, 1.0},
      {"<think>x</think>\n<answer> 408\n</answer>\n", 1.0, 1.0},         // whitespace around the integer
      {"  <think>x</think>  <answer>\t408 </answer>  ", 1.0, 1.0},
      {"<think></think><answer>408</answer>", 1.0, 1.0},                  // an empty think block is still one
      {"<think>x</think><answer>409</answer>", 1.0, 0.1},
      {"<think>x</think><answer>0408</answer>", 1.0, 0.1},                // not the exact integer
      {"<think>x</think><answer>+408</answer>", 1.0, 0.1},
      {"<think>x</think><answer>408.0</answer>", 1.0, 0.1},
      {"<think>x</think><answer>4 08</answer>", 1.0, 0.1},
      {"<think>x</think><answer>12 * 34</answer>", 1.0, 0.1},
      {"<think>x</think><answer>408 = 408</answer>", 1.0, 0.1},
      {"<think>x</think><answer></answer>", 1.0, 0.1},                    // well-formed, empty answer
      {"<answer>408</answer>", 0.0, 1.0},                                 // correct without the think block
      {"The answer is <answer>408</answer>.", 0.0, 1.0},
      {"<answer>409</answer>", 0.0, 0.0},                                 // wrong and malformed
      {"<think>x</think><answer>408", 0.0, 0.0},                          // cut off: no complete block
      {"<think>x</think>408", 0.0, 0.0},
      {"408", 0.0, 0.0},
      {"", 0.0, 0.0},
      {"<think>x<answer>408</answer>", 0.0, 1.0},                         // unclosed think, correct block
      {"<THINK>x</THINK><ANSWER>408</ANSWER>", 0.0, 0.0},                 // tags are lower case
  };
  for (const Case& c : cases) {
    EXPECT_EQ(format(c.completion), c.format) << c.completion;
    EXPECT_EQ(accuracy(p, c.completion), c.accuracy) << c.completion << ": " << kiln::rl::grade(p, c.completion).reason;
  }
  const Problem n = arithmetic_problem(3, '-', 10);
  EXPECT_EQ(accuracy(n, wrap("-7")), 1.0);
  EXPECT_EQ(accuracy(n, wrap("7")), 0.1);
  EXPECT_EQ(accuracy(n, wrap("- 7")), 0.1);
  EXPECT_EQ(accuracy(n, wrap("\xE2\x88\x92" "7")), 0.1);  // U+2212 is an operator in Countdown, not a sign here

  // Reasons and outcomes.
  Grade g = kiln::rl::grade(p, wrap("409"));
  EXPECT_EQ(g.outcome, Outcome::wrong);
  EXPECT_EQ(g.reason, "expected 408, got \"409\"");
  g = kiln::rl::grade(p, wrap("408"));
  EXPECT_EQ(g.outcome, Outcome::correct);
  EXPECT_EQ(g.reason, "correct");
  g = kiln::rl::grade(p, "<think>x</think>");
  EXPECT_EQ(g.outcome, Outcome::malformed);
  EXPECT_EQ(g.reason, "no complete <answer>...</answer> block");
  g = kiln::rl::grade(p, "<answer>409</answer> more");
  EXPECT_EQ(g.outcome, Outcome::malformed);
  EXPECT_NE(g.reason.find("expected 408"), std::string::npos) << g.reason;
  EXPECT_NE(g.reason.find("does not start with <think>"), std::string::npos) << g.reason;

  // Configurable scores.
  const RewardScores s{2.0, -0.5, -1.0};
  EXPECT_EQ(kiln::rl::accuracy_score(p, wrap("408"), s), 2.0);
  EXPECT_EQ(kiln::rl::accuracy_score(p, wrap("409"), s), -0.5);
  EXPECT_EQ(kiln::rl::accuracy_score(p, "409", s), -1.0);
  EXPECT_EQ(kiln::rl::accuracy_score(p, "<answer>409</answer>", s), -1.0);
  EXPECT_KILN_ERROR(kiln::rl::accuracy_score(p, "x", {1.0, NAN, 0.0}), "rl::grade", "finite");
  EXPECT_KILN_ERROR(kiln::rl::accuracy_reward({INFINITY, 0.1, 0.0}), "rl::accuracy_reward", "finite");
}

TEST(Rewards, CountdownHandComputed) {
  const Problem p = countdown_problem({3, 7, 25, 50}, 128);
  const std::vector<std::pair<std::string, double>> cases = {
      {"7 * 25 - 50 + 3", 1.0},
      {"3 + 25 * 7 - 50", 1.0},
      {"(25 \xC3\x97 7) \xE2\x88\x92 50 + 3", 1.0},   // × and U+2212
      {"7 * 25 - (50 - 3)", 1.0},
      {"7*25-50+3 = 128", 1.0},
      {"7 * 25 - 50 + 3 = 129", 0.1},
      {"7 * 25 - 50", 0.1},                             // 125, and 3 unused
      {"7 * 25 - 50 - 3", 0.1},                         // every number once, makes 122
      {"7 * 25 - 50 + 3 + 3 - 3", 0.1},                 // 3 used three times
      {"7 * 25 - 50 + 3 * 1", 0.1},                     // 1 is not given
      {"(7 * 25 - 50 + 3) / (7 - 7)", 0.1},             // division by zero
      {"7 * 25 / (50 - 50) + 3", 0.1},
      {"-3 + 7 * 25 - 50", 0.1},                        // no unary minus
      {"7 * 25 - 50 + 3.0", 0.1},
      {"128", 0.1},                                     // the target alone uses no number
      {"", 0.1},
  };
  for (const auto& [answer, expected] : cases) {
    EXPECT_EQ(accuracy(p, wrap(answer)), expected) << answer << ": " << kiln::rl::grade(p, wrap(answer)).reason;
    EXPECT_EQ(format(wrap(answer)), 1.0) << answer;
  }
  // A subset of the numbers that makes the target is not enough: each number exactly once.
  const Problem extra = countdown_problem({2, 3, 7, 25, 50}, 128);
  EXPECT_EQ(accuracy(extra, wrap("7 * 25 - 50 + 3")), 0.1);
  EXPECT_EQ(accuracy(extra, wrap("(7 * 25 - 50 + 3) * 2 / 2")), 0.1);  // 2 used twice
  EXPECT_EQ(accuracy(extra, wrap("7 * 25 - 50 + 3 * 2 - 2")), 0.1);     // 2 used twice
  EXPECT_EQ(accuracy(extra, wrap("(7 * 25 - 50 + 3) * (2 / 2)")), 0.1);
  EXPECT_EQ(accuracy(extra, wrap("7 * 25 - 50 + 3 - 2 + 2")), 0.1);
  EXPECT_EQ(accuracy(countdown_problem({2, 2, 3, 7, 25, 50}, 128), wrap("7 * 25 - 50 + 3 - 2 + 2")), 1.0);
  EXPECT_EQ(accuracy(countdown_problem({2, 2, 3, 7, 25, 50}, 128), wrap("(7 * 25 - 50 + 3) * 2 / 2")), 1.0);
  // Exact rationals: (1/3 + 2/3) * 6 is 6; 7/2*4 is 14; 1/3*3 is 1, not 0.999...
  EXPECT_EQ(accuracy(countdown_problem({1, 2, 3, 3, 6}, 6), wrap("(1 / 3 + 2 / 3) * 6")), 1.0);
  EXPECT_EQ(accuracy(countdown_problem({2, 4, 7}, 14), wrap("7 / 2 * 4")), 1.0);
  EXPECT_EQ(accuracy(countdown_problem({1, 3, 3}, 1), wrap("1 / 3 * 3")), 1.0);
  EXPECT_EQ(accuracy(countdown_problem({2, 4, 7}, 14), wrap("7 / 2 + 4")), 0.1);  // 15/2
  EXPECT_EQ(accuracy(countdown_problem({2, 4, 7}, 7), wrap("7 / 2 * 4 / 2")), 0.1);  // 7, but 2 used twice
}

TEST(Rewards, GeneratedSolutionsScoreOneAndMutationsScoreWrong) {
  std::mt19937_64 rng(5);
  int dropped = 0, doubled = 0, changed = 0, changed_wrong = 0;
  for (int n = 2; n <= 8; ++n) {
    CountdownConfig cfg;
    cfg.min_numbers = cfg.max_numbers = n;
    kiln::Generator g{static_cast<std::uint64_t>(100 + n), 0};
    for (int k = 0; k < 150; ++k) {
      const Problem p = sample_countdown(cfg, g, k % 2 ? Split::test : Split::train);
      // The solution uses each number exactly once and evaluates to the target.
      const std::vector<std::string> t = tokens(p.solution);
      std::vector<std::int64_t> literals;
      for (const std::string& x : t)
        if (is_number(x)) literals.push_back(std::stoll(x));
      std::sort(literals.begin(), literals.end());
      ASSERT_EQ(literals, p.numbers) << p.solution;
      const auto ref = reference_value(p.solution);
      ASSERT_TRUE(ref && ref->d == 1 && ref->n == p.target) << p.solution;
      ASSERT_EQ(accuracy(p, wrap(p.solution)), 1.0) << canonical(p) << ": " << p.solution;
      ASSERT_EQ(accuracy(p, wrap(p.solution + " = " + std::to_string(p.target))), 1.0) << p.solution;

      std::vector<std::size_t> numbers, ops;
      for (std::size_t i = 0; i < t.size(); ++i) (is_number(t[i]) ? numbers : ops).push_back(i);
      std::erase_if(ops, [&](std::size_t i) { return !is_op(t[i]); });

      // Drop a number with an adjacent operator: one number unused, whatever the value.
      {
        std::vector<std::string> m = t;
        const std::size_t i = numbers[rng() % numbers.size()];
        if (i + 1 < m.size() && is_op(m[i + 1]))
          m.erase(m.begin() + static_cast<std::ptrdiff_t>(i), m.begin() + static_cast<std::ptrdiff_t>(i) + 2);
        else
          m.erase(m.begin() + static_cast<std::ptrdiff_t>(i) - 1, m.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        const std::string text = untokens(m);
        ASSERT_TRUE(reference_value(text).has_value() || text.find('/') != std::string::npos) << text;
        ASSERT_EQ(accuracy(p, wrap(text)), 0.1) << p.solution << " -> " << text;
        ++dropped;
      }
      // Use one number twice (in place of a different one).
      {
        const std::size_t i = numbers[rng() % numbers.size()], j = numbers[rng() % numbers.size()];
        if (t[i] != t[j]) {
          std::vector<std::string> m = t;
          m[i] = t[j];
          ASSERT_EQ(accuracy(p, wrap(untokens(m))), 0.1) << p.solution << " -> " << untokens(m);
          ++doubled;
        }
      }
      // Change an operator: wrong unless the new expression happens to make the target too
      // (decided by the reference evaluator).
      {
        std::vector<std::string> m = t;
        const std::size_t i = ops[rng() % ops.size()];
        const std::string choices = "+-*/";
        std::string op;
        do op = std::string(1, choices[rng() % 4]);
        while (op == t[i]);
        m[i] = op;
        const std::string text = untokens(m);
        const auto v = reference_value(text);
        const bool hits = v && v->d == 1 && v->n == p.target;
        ASSERT_EQ(accuracy(p, wrap(text)), hits ? 1.0 : 0.1) << p.solution << " -> " << text;
        ++changed;
        changed_wrong += !hits;
      }
    }
  }
  EXPECT_EQ(dropped, 7 * 150);
  EXPECT_GT(doubled, 7 * 150 * 3 / 4);
  EXPECT_GT(changed_wrong, changed * 9 / 10);  // the mutation really changes the value nearly always
}

TEST(Rewards, TheLastCompleteAnswerBlockIsGraded) {
  const Problem p = arithmetic_problem(12, '*', 34);  // 408
  struct Case {
    std::string completion;
    double format, accuracy;
  };
  const std::vector<Case> cases = {
      // Several answers: only the last complete block counts, and several blocks are malformed.
      {"<think>x</think><answer>1</answer><answer>408</answer>", 0.0, 1.0},
      {"<think>x</think><answer>408</answer><answer>1</answer>", 0.0, 0.0},
      {"<think>x</think><answer>408</answer>\n<answer>409</answer>", 0.0, 0.0},
      {"<think>x</think><answer>408</answer><answer>409", 0.0, 1.0},       // the last one is incomplete
      // Nested tags.
      {"<think>x</think><answer><answer>408</answer>", 0.0, 1.0},
      {"<think>x</think><answer>4<answer>08</answer>", 0.0, 0.0},           // the block is "08"
      {"<think>x</think><answer>408</answer></answer>", 0.0, 1.0},          // a stray close
      {"<think><think>x</think></think><answer>408</answer>", 0.0, 1.0},
      {"<think>x</think><answer><think>408</think></answer>", 0.0, 0.0},    // tags inside the block
      {"<think>x</think><answer>409</answer></think>", 0.0, 0.0},
      // An answer written inside the think block is still the last complete block.
      {"<think>I will write <answer>408</answer></think>", 0.0, 1.0},
      {"<think>first <answer>409</answer></think><answer>408</answer>", 0.0, 1.0},
      {"<think>first <answer>408</answer></think><answer>409</answer>", 0.0, 0.0},
      // Repeated tags.
      {"<think><think><think>x</think><answer>408</answer>", 0.0, 1.0},
      {"<think>x</think></think><answer>408</answer>", 0.0, 1.0},
      {"<answer><answer><answer></answer></answer></answer>", 0.0, 0.0},   // the last block is empty
      {"</answer></answer><answer>", 0.0, 0.0},
      // Think after the answer, answer before think.
      {"<think>x</think><answer>408</answer><think>more</think>", 0.0, 1.0},
      {"<answer>408</answer><think>x</think>", 0.0, 1.0},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(format(c.completion), c.format) << c.completion;
    EXPECT_EQ(accuracy(p, c.completion), c.accuracy) << c.completion << ": " << kiln::rl::grade(p, c.completion).reason;
  }
}

TEST(Rewards, AdversarialStringsNeverCrashOrHang) {
  const Problem arith = arithmetic_problem(12, '*', 34);          // 408
  const Problem cd = countdown_problem({3, 7, 25, 50}, 128);       // 7 * 25 - 50 + 3
  auto repeat = [](std::string_view s, std::size_t n) {
    std::string out;
    out.reserve(s.size() * n);
    for (std::size_t i = 0; i < n; ++i) out += s;
    return out;
  };
  std::mt19937_64 rng(23);
  auto garbage = [&](std::size_t n, bool allow_lt) {
    std::string s(n, '\0');
    for (char& c : s) {
      c = static_cast<char>(rng() & 0xFF);
      if (!allow_lt && c == '<') c = '>';
    }
    return s;
  };
  const std::string think = "<think>x</think>";
  struct Case {
    std::string what, completion;
    double format, arith, countdown;  // expected format, accuracy on 12 * 34, accuracy on the Countdown
  };
  const std::string digits5000 = repeat("9", 5000);
  const std::vector<Case> cases = {
      {"200k of <answer>", repeat("<answer>", 25000), 0, 0, 0},
      {"200k of <answer> then one block", repeat("<answer>", 25000) + "408</answer>", 0, 1, 0},
      {"200k of </answer>", repeat("</answer>", 22223), 0, 0, 0},
      {"<answer> then 200k of </answer>", "<answer>408" + repeat("</answer>", 22223), 0, 1, 0},
      {"200k of <think>", repeat("<think>", 28572), 0, 0, 0},
      {"think then 200k of </think>", "<think>" + repeat("</think>", 25000) + "<answer>408</answer>", 0, 1, 0},
      {"200k of <", std::string(200000, '<') + "answer>408</answer>", 0, 1, 0},
      {"200k of <answe", repeat("<answe", 33334) + "<answer>408</answer>", 0, 1, 0},
      {"100k nested blocks", repeat("<answer>", 100000) + repeat("</answer>", 100000), 0, 0, 0},
      {"10k answers then a correct one", think + repeat("<answer>1</answer>", 10000) + "<answer>408</answer>", 0, 1, 0},
      {"10k answers then a wrong one", think + repeat("<answer>408</answer>", 10000) + "<answer>1</answer>", 0, 0, 0},
      {"1M-character think block", "<think>" + std::string(1 << 20, 'x') + "</think><answer>408</answer>", 1, 1, 0.1},
      {"20k spaces around the answer", think + "<answer>" + std::string(10000, ' ') + "408" + std::string(10000, ' ') + "</answer>",
       1, 1, 0.1},
      {"20k spaces around the expression",
       think + "<answer>" + std::string(10000, ' ') + "7 * 25 - 50 + 3" + std::string(10000, ' ') + "</answer>", 1, 0.1, 1},
      {"5000-digit number", think + "<answer>" + digits5000 + "</answer>", 1, 0.1, 0.1},
      {"5000-digit numbers in an expression", think + "<answer>" + digits5000 + " * " + digits5000 + "</answer>", 1, 0.1, 0.1},
      {"900-digit literal", think + "<answer>" + std::string(900, '7') + " - 3</answer>", 1, 0.1, 0.1},
      {"overflowing product", think + "<answer>999999999999999999 * 999999999999999999 * 7 * 25 - 50 + 3</answer>", 1, 0.1, 0.1},
      {"overflowing sum of fractions", think + "<answer>3 / 999999999999999989 + 7 / 999999999999999967 + 25 + 50</answer>", 1,
       0.1, 0.1},
      {"division by zero", think + "<answer>7 * 25 / (50 - 50) + 3</answer>", 1, 0.1, 0.1},
      {"division by a zero fraction", think + "<answer>(7 * 25 - 50 + 3) / (3 / 7 - 3 / 7)</answer>", 1, 0.1, 0.1},
      {"deep nesting", think + "<answer>" + std::string(500, '(') + "7" + std::string(500, ')') + " * 25 - 50 + 3</answer>", 1,
       0.1, 0.1},
      {"100k open parentheses", think + "<answer>" + std::string(100000, '(') + "</answer>", 1, 0.1, 0.1},
      {"200k of (", std::string(200000, '('), 0, 0, 0},
      {"200k garbage bytes", garbage(200000, true), 0, 0, 0},
      {"200k garbage bytes then a block", garbage(200000, false) + "<answer>408</answer>", 0, 1, 0},
      {"garbage answer", think + "<answer>" + garbage(20000, false) + "</answer>", 1, 0.1, 0.1},
      {"garbage think", "<think>" + garbage(20000, false) + "</think><answer>408</answer>", 1, 1, 0.1},
      {"NUL and control bytes in think", bytes("<think>\0\x01\x1B[2J\x7F</think><answer>408</answer>"), 1, 1, 0.1},
      {"NUL in the answer", bytes("<think>x</think><answer>408\0</answer>"), 1, 0.1, 0.1},
      {"NUL before the completion", bytes("\0<think>x</think><answer>408</answer>"), 0, 1, 0},
      {"non-ASCII think", "<think>\xE6\x80\x9D\xE8\x80\x83 \xC3\xA9</think><answer>408</answer>", 1, 1, 0.1},
      {"full-width digits", think + "<answer>\xEF\xBC\x94\xEF\xBC\x90\xEF\xBC\x98</answer>", 1, 0.1, 0.1},
      {"invalid UTF-8", think + "<answer>408\xC3</answer>", 1, 0.1, 0.1},
      {"truncated multiplication sign", think + "<answer>7 \xC3 25 - 50 + 3</answer>", 1, 0.1, 0.1},
      {"emoji operator", think + "<answer>7 \xE2\x9C\x96 25 - 50 + 3</answer>", 1, 0.1, 0.1},
      {"vertical tab and form feed", think + "<answer>\v408\f</answer>", 1, 1, 0.1},
  };
  for (const Case& c : cases) {
    double f = -1, a = -1, k = -1;
    ASSERT_NO_THROW(f = format(c.completion)) << c.what;
    ASSERT_NO_THROW(a = accuracy(arith, c.completion)) << c.what;
    ASSERT_NO_THROW(k = accuracy(cd, c.completion)) << c.what;
    EXPECT_EQ(f, c.format) << c.what;
    EXPECT_EQ(a, c.arith) << c.what << ": " << kiln::rl::grade(arith, c.completion).reason;
    EXPECT_EQ(k, c.countdown) << c.what << ": " << kiln::rl::grade(cd, c.completion).reason;
  }
  // Ten times larger inputs of the patterns that would break a quadratic scan (2M characters):
  // each finishes in milliseconds with a linear scan and in hours with a quadratic one.
  for (const std::string& big : {repeat("<answer>", 250000), repeat("</answer>", 250000) + "<answer>",
                                 "<think>" + repeat("<think>", 250000), std::string(2000000, '<')}) {
    EXPECT_EQ(format(big), 0.0);
    EXPECT_EQ(accuracy(arith, big), 0.0);
    EXPECT_EQ(accuracy(cd, big), 0.0);
  }
}

TEST(Rewards, FuzzedCompletionsAgreeWithVerify) {
  // Random edits of correct completions: the format reward is verify's format; on well-formed
  // completions the accuracy reward is correct exactly when verify accepts; a correct score always
  // means the last complete answer block passes check_answer.
  TaskMix mix;
  kiln::Generator g{77, 0};
  std::mt19937_64 rng(3);
  const std::string alphabet = "0123456789+-*/()= <>/thinkanswer\xC3\x97\xE2\x88\x92\n";
  int correct = 0, wrong = 0, malformed = 0;
  for (int k = 0; k < 20000; ++k) {
    const Problem p = sample(mix, g, Split::train);
    std::string text = worked_solution(p);
    const int edits = static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const std::size_t pos = rng() % text.size();
      switch (rng() % 4) {
        case 0: text.erase(pos, 1 + rng() % 3); break;
        case 1: text.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
        case 2: text.insert(pos, rng() % 2 ? "<answer>" : "</answer>"); break;
        default: text[pos] = static_cast<char>(rng() & 0xFF);
      }
    }
    const Reward v = verify(p, text);
    const double f = format(text), a = accuracy(p, text);
    ASSERT_EQ(f, v.format) << text;
    if (f == 1.0) {
      ASSERT_EQ(a == 1.0, v.accuracy == 1.0) << text;
      ASSERT_TRUE(a == 1.0 || a == 0.1) << text;
    } else {
      ASSERT_TRUE(a == 1.0 || a == 0.0) << text;
    }
    if (a == 1.0) {
      ASSERT_TRUE(last_answer(text).has_value());
      ASSERT_TRUE(check_answer(p, *last_answer(text))) << text;
    }
    if (edits == 0) {
      ASSERT_EQ(a, 1.0) << text;
    }
    correct += a == 1.0;
    wrong += a == 0.1;
    malformed += a == 0.0;
  }
  EXPECT_GT(correct, 5000);
  EXPECT_GT(wrong, 200);
  EXPECT_GT(malformed, 500);
}

TEST(Rewards, RewardSetWeightsGroupsAndStats) {
  const std::vector<Problem> problems = {arithmetic_problem(12, '*', 34), countdown_problem({3, 7, 25, 50}, 128)};
  const std::vector<std::string> completions = {
      wrap("408"),                 // problem 0: correct, well-formed
      wrap("409"),                 // problem 0: wrong, well-formed
      "<answer>408</answer>",      // problem 0: correct, malformed
      wrap("7 * 25 - 50 + 3"),     // problem 1: correct
      wrap("7 * 25 - 50"),         // problem 1: wrong
      "nothing",                   // problem 1: malformed
  };
  kiln::rl::RewardSet set = kiln::rl::r1_zero_rewards();
  set.add("target", 0.0, [](const Problem& p, std::string_view) { return static_cast<double>(p.target); });
  set.add({"length", -0.01, [](const Problem&, std::string_view c) { return static_cast<double>(c.size()); }});
  ASSERT_EQ(set.size(), 4u);
  EXPECT_EQ(set.functions()[0].name, "accuracy");
  EXPECT_EQ(set.functions()[1].name, "format");
  EXPECT_EQ(set.functions()[1].weight, 0.5);

  const kiln::rl::RewardBatch b = set.evaluate(problems, completions, 3);
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(b.names, (std::vector<std::string>{"accuracy", "format", "target", "length"}));
  EXPECT_EQ(b.weights, (std::vector<double>{1.0, 0.5, 0.0, -0.01}));
  EXPECT_EQ(b.of("accuracy"), (std::vector<double>{1.0, 0.1, 1.0, 1.0, 0.1, 0.0}));
  EXPECT_EQ(b.of("format"), (std::vector<double>{1.0, 1.0, 0.0, 1.0, 1.0, 0.0}));
  EXPECT_EQ(b.of("target"), (std::vector<double>{408, 408, 408, 128, 128, 128}));  // completion i answers problem i / 3
  for (std::size_t i = 0; i < completions.size(); ++i) EXPECT_EQ(b.of("length")[i], static_cast<double>(completions[i].size()));
  const std::vector<double> r1 = {1.5, 0.6, 1.0, 1.5, 0.6, 0.0};  // accuracy + 0.5 * format, by hand
  for (std::size_t i = 0; i < completions.size(); ++i)
    EXPECT_DOUBLE_EQ(b.total[i], r1[i] - 0.01 * static_cast<double>(completions[i].size())) << i;
  EXPECT_KILN_ERROR(b.of("nope"), "rl::RewardBatch::of", "nope");

  // Stats: mean and population std, by hand.
  const auto stats = b.stats();
  ASSERT_EQ(stats.size(), 5u);
  EXPECT_EQ(stats[0].name, "accuracy");
  EXPECT_DOUBLE_EQ(stats[0].mean, 3.2 / 6);
  double var = 0;
  for (const double x : {1.0, 0.1, 1.0, 1.0, 0.1, 0.0}) var += (x - 3.2 / 6) * (x - 3.2 / 6);
  EXPECT_DOUBLE_EQ(stats[0].std, std::sqrt(var / 6));
  EXPECT_EQ(stats[2].name, "target");
  EXPECT_DOUBLE_EQ(stats[2].mean, 268.0);
  EXPECT_DOUBLE_EQ(stats[2].std, 140.0);
  EXPECT_EQ(stats[4].name, "total");

  // One problem per completion (the default group of 1), and an empty batch.
  const std::vector<std::string> two = {wrap("408"), wrap("1")};
  EXPECT_EQ(set.evaluate(problems, two).of("accuracy"), (std::vector<double>{1.0, 0.1}));
  const kiln::rl::RewardBatch none = set.evaluate({}, std::vector<std::string>{}, 4);
  EXPECT_EQ(none.size(), 0u);
  EXPECT_EQ(none.stats()[0].mean, 0.0);

  // Custom scores through the set.
  kiln::rl::RewardSet custom({kiln::rl::accuracy_reward({5.0, 1.0, -1.0}, 2.0)});
  EXPECT_EQ(custom.evaluate(problems, completions, 3).total, (std::vector<double>{10.0, 2.0, 10.0, 10.0, 2.0, -2.0}));
}

TEST(Rewards, RewardSetErrorsNameTheFunction) {
  const std::vector<Problem> problems = {arithmetic_problem(12, '*', 34)};
  const std::vector<std::string> completions = {wrap("408"), wrap("409"), wrap("boom"), wrap("410")};
  kiln::rl::RewardSet set({kiln::rl::format_reward()});

  // A user callable that throws: the error names the function, the completion and the cause.
  kiln::rl::RewardSet throwing = set;
  throwing.add("explode", 1.0, [](const Problem&, std::string_view c) -> double {
    if (c.find("boom") != std::string_view::npos) throw std::runtime_error("cannot score this");
    return 0.0;
  });
  EXPECT_KILN_ERROR(throwing.evaluate(problems, completions, 4), "kiln::rl::RewardSet::evaluate", "\"explode\"",
                    "completion 2", "cannot score this");
  kiln::rl::RewardSet throwing_int({{"odd", 1.0, [](const Problem&, std::string_view) -> double { throw 7; }}});
  EXPECT_KILN_ERROR(throwing_int.evaluate(problems, completions, 4), "\"odd\"", "completion 0", "not a std::exception");
  kiln::rl::RewardSet throwing_kiln({{"inner", 1.0, [](const Problem&, std::string_view) -> double {
                                         kiln::fail("my_reward", "bad input");
                                       }}});
  EXPECT_KILN_ERROR(throwing_kiln.evaluate(problems, completions, 4), "\"inner\"", "kiln::my_reward: bad input");
  // Non-finite values.
  kiln::rl::RewardSet nan_set({{"nan", 1.0, [](const Problem&, std::string_view c) { return c.size() > 40 ? NAN : 0.0; }}});
  EXPECT_KILN_ERROR(nan_set.evaluate(problems, completions, 4), "\"nan\"", "returned nan", "finite");
  kiln::rl::RewardSet inf_set({{"inf", 1.0, [](const Problem&, std::string_view) { return -INFINITY; }}});
  EXPECT_KILN_ERROR(inf_set.evaluate(problems, completions, 4), "\"inf\"", "returned -inf", "completion 0");

  // Sizes.
  EXPECT_KILN_ERROR(set.evaluate(problems, completions, 3), "rl::RewardSet::evaluate", "4 completions for 1 problems",
                    "groups of 3");
  EXPECT_KILN_ERROR(set.evaluate(problems, completions), "4 completions for 1 problems");
  EXPECT_KILN_ERROR(set.evaluate(problems, completions, 0), "group_size");
  EXPECT_KILN_ERROR(kiln::rl::RewardSet().evaluate(problems, completions, 4), "no functions");

  // Bad functions.
  EXPECT_KILN_ERROR(kiln::rl::RewardSet().add("", 1.0, [](const Problem&, std::string_view) { return 0.0; }),
                    "rl::RewardSet::add", "needs a name");
  EXPECT_KILN_ERROR(kiln::rl::RewardSet().add("empty", 1.0, nullptr), "\"empty\"", "no callable");
  EXPECT_KILN_ERROR(kiln::rl::RewardSet().add(kiln::rl::format_reward(NAN)), "\"format\"", "weight nan");
  EXPECT_KILN_ERROR(kiln::rl::RewardSet({kiln::rl::format_reward(), kiln::rl::format_reward(2.0)}), "\"format\"",
                    "already in the set");
}

}  // namespace
