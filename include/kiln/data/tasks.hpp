// Verifiable reasoning tasks (shared by pretraining and the GRPO trainer): multi-digit arithmetic
// and Countdown, their seeded generators with disjoint train/test splits, prompts, the expected
// answer format, a rule-based verifier, and worked solutions for a pretraining corpus. The GRPO
// rewards built on this verifier (the R1-Zero template, format and accuracy rewards, weighted
// user rewards) live in rl/rewards.hpp.
//
// Tasks.
//   - Arithmetic: a op b with op in + - * and operands of min_digits..max_digits digits (1-digit
//     operands are 0..9, d-digit ones 10^(d-1)..10^d-1, d <= 9 so every value fits int64).
//     Prompt "Arithmetic: compute 478 * 365.\n"; answer the decimal value, e.g. "174470" or "-12".
//   - Countdown: min_numbers..max_numbers numbers in 1..max_number and a target. Reach the target
//     with + - * / and parentheses using each given number exactly once (a number given twice is
//     used twice). Answers are evaluated exactly over the rationals: intermediate values may be
//     negative or fractional, only the final value must equal the target, e.g. (1 / 3 + 2 / 3) * 6
//     makes 6. Prompt "Countdown: use 3 7 25 50 to make 128.\n" (numbers in ascending order);
//     answer an expression over the given numbers, e.g. "7 * 25 - 50 + 3", optionally followed by
//     "= 128". The generator picks the numbers, then builds the target from a random expression
//     over all of them (positive integers at every step, exact divisions, values up to
//     max_intermediate), keeping targets in [min_target, max_target] that are not themselves one
//     of the numbers; so every problem is solvable, and Problem::solution holds that expression.
//
// Splits. A problem's split is a function of the problem alone: a hash of its canonical text
// ("arithmetic 12 + 345" with the operands of + and * sorted; "countdown 3 7 25 50 -> 128") puts
// a fraction test_fraction of all problems in the test split. So no test problem appears in the
// train split whatever the seeds, and a smaller test_fraction gives a subset of the test split.
// The generators draw candidates and keep those in the requested split.
//
// Randomness. A sampler takes a kiln::Generator and consumes one counter per candidate (and one
// for the task choice of a mix); candidate i is a pure function of (generator seed, counter) via
// Philox, so a run is reproducible from (seed, offset), which a checkpoint can store.
//
// Output format. A completion (the model's text after the prompt) is well-formed when it is
//   <think>reasoning</think><answer>answer</answer>
// with optional whitespace (space, tab, CR, LF) before, between the two blocks and after, and no
// tag (<think>, </think>, <answer>, </answer>; exact lower case) inside either block: exactly one
// think block and exactly one answer block. verify() returns the format reward (1 when the
// completion is well-formed) and the accuracy reward (1 when, in addition, the answer is correct)
// separately, plus a short reason. last_answer() finds the content of the last complete
// <answer>...</answer> block of any text (the GRPO accuracy reward grades that block, whatever
// the rest of the completion looks like; on a well-formed completion it is the answer block).
//
// Checking an answer. Arithmetic answers must be exactly the decimal value (surrounding whitespace
// aside; no sign but a leading '-' for negative values, no leading zeros). Countdown answers are
// parsed by a small recursive-descent parser (+ - and * / with the usual precedence and
// parentheses; * and / also as U+00D7 and U+00F7, minus also as U+2212; no unary minus) and
// evaluated over fractions whose numerator and denominator, in lowest terms, must fit int64 at
// every step (computed through 128-bit products, so no step can overflow undetected). Overflow,
// division by zero, nesting deeper than 64 parentheses, literals of more than 18 digits and
// answers over 1000 bytes are all reported as wrong answers, never thrown. Every check is linear
// in the length of the text (the parser only ever sees at most 1000 bytes, and recurses at most
// 64 levels deep), so no input can make it crash, hang or exhaust the stack.
//
// Worked solutions (worked_solution, training_text, worked_corpus) put step-by-step reasoning in
// the think block: column addition and subtraction with carries and borrows, long multiplication
// digit by digit with the partial products summed, and for Countdown a couple of failed attempts
// followed by the steps of the solution (which uses every number), each step listing the numbers
// left.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/core/random.hpp"

namespace kiln::data {

enum class TaskKind { arithmetic, countdown };
enum class Split { train, test };

struct Problem {
  TaskKind kind = TaskKind::arithmetic;
  std::vector<std::int64_t> numbers;  // arithmetic: {a, b}; countdown: the numbers, ascending
  char op = '+';                      // arithmetic: '+', '-' or '*'
  std::int64_t target = 0;            // arithmetic: a op b; countdown: the number to make
  std::string solution;               // a correct answer
};

struct ArithmeticConfig {
  int min_digits = 1, max_digits = 3;  // 1..9
  std::string ops = "+-*";
  double test_fraction = 0.1;
};

struct CountdownConfig {
  int min_numbers = 3, max_numbers = 6;  // 2..8
  std::int64_t max_number = 100;
  std::int64_t min_target = 10, max_target = 1000;
  std::int64_t max_intermediate = 1000000;
  double test_fraction = 0.1;
};

// A mix of both tasks: each sample is Countdown with probability countdown_fraction.
struct TaskMix {
  ArithmeticConfig arithmetic;
  CountdownConfig countdown;
  double countdown_fraction = 0.5;
};

struct Reward {
  double format = 0.0;    // 1 when the completion has the <think>..</think><answer>..</answer> shape
  double accuracy = 0.0;  // 1 when, in addition, the answer is correct
  std::string reason;     // "correct" or what was wrong
};

namespace tasks_detail {

// 128-bit integers hold every product of two int64 values exactly (|a * b| <= 2^126), and every
// sum of two such products (< 2^127), which is what exact fraction arithmetic needs.
__extension__ typedef __int128 int128;
__extension__ typedef unsigned __int128 uint128;

}  // namespace tasks_detail

// An exact fraction num / den in lowest terms with den > 0 (den == 1 for an integer); both parts
// fit int64. Countdown answers are evaluated in these, so "7 / 2 * 4" makes exactly 14.
// Rational{5} is the integer 5.
struct Rational {
  std::int64_t num = 0, den = 1;

  bool is_integer() const { return den == 1; }
  friend bool operator==(const Rational&, const Rational&) = default;
  friend bool operator<(const Rational& a, const Rational& b) {  // cross-multiplied in 128 bits: exact
    return static_cast<tasks_detail::int128>(a.num) * b.den < static_cast<tasks_detail::int128>(b.num) * a.den;
  }
};

// Prints "14" or "-75/7".
inline std::ostream& operator<<(std::ostream& os, const Rational& r) {
  os << r.num;
  if (r.den != 1) os << '/' << r.den;
  return os;
}

namespace tasks_detail {

// n / d in lowest terms with a positive denominator, or nullopt when the numerator or the
// denominator does not fit int64. Requires d != 0 and |n|, |d| < 2^127 (so negation is defined).
inline std::optional<Rational> make_rational(int128 n, int128 d) {
  if (d < 0) {
    n = -n;
    d = -d;
  }
  uint128 a = n < 0 ? static_cast<uint128>(-n) : static_cast<uint128>(n), b = static_cast<uint128>(d);
  while (b != 0) {  // Euclid: a becomes gcd(|n|, d) >= 1, as d > 0
    const uint128 t = a % b;
    a = b;
    b = t;
  }
  n /= static_cast<int128>(a);
  d /= static_cast<int128>(a);
  if (n < std::numeric_limits<std::int64_t>::min() || n > std::numeric_limits<std::int64_t>::max() ||
      d > std::numeric_limits<std::int64_t>::max())
    return std::nullopt;
  return Rational{static_cast<std::int64_t>(n), static_cast<std::int64_t>(d)};
}

// x op y exactly (op one of + - * /; y != 0 for /), or nullopt when the result does not fit.
// Every product below is of two int64 values, every sum of two such products: no 128-bit overflow.
inline std::optional<Rational> rational_op(const Rational& x, char op, const Rational& y) {
  const int128 a = x.num, b = x.den, c = y.num, d = y.den;
  switch (op) {
    case '+': return make_rational(a * d + c * b, b * d);
    case '-': return make_rational(a * d - c * b, b * d);
    case '*': return make_rational(a * c, b * d);
    default: return make_rational(a * d, b * c);
  }
}

// Philox words for one candidate problem: counter (block, index, tag) under key `seed`. The tag
// keeps these counters apart from those of random tensors (whose upper words are zero).
class Stream {
 public:
  Stream(std::uint64_t seed, std::uint64_t index) : seed_(seed), index_(index) {}

  std::uint32_t next() {
    if (used_ == 4) {
      words_ = philox::block({block_++, static_cast<std::uint32_t>(index_), static_cast<std::uint32_t>(index_ >> 32), 0x7461736Bu},
                             {static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)});
      used_ = 0;
    }
    return words_[used_++];
  }

  // Uniform in [lo, hi], unbiased (rejection of the last partial range).
  std::int64_t uniform(std::int64_t lo, std::int64_t hi) {
    const std::uint64_t range = static_cast<std::uint64_t>(hi - lo) + 1;
    if (range == 0) return lo;  // the whole 64-bit range
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    std::uint64_t x;
    do {
      x = (static_cast<std::uint64_t>(next()) << 32) | next();
    } while (x >= limit);
    return lo + static_cast<std::int64_t>(x % range);
  }

 private:
  std::uint64_t seed_, index_;
  std::uint32_t block_ = 0;
  std::array<std::uint32_t, 4> words_{};
  int used_ = 4;
};

inline std::uint64_t hash_text(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then the splitmix64 finaliser to spread it
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

inline std::string join(const std::vector<std::int64_t>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(v[i]);
  }
  return s;
}

inline std::string trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  std::size_t b = 0, e = s.size();
  while (b < e && space(s[b])) ++b;
  while (e > b && space(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

// A short printable rendering of model text for reasons.
inline std::string quote(std::string_view s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7F) ? std::string(1, static_cast<char>(c)) : std::string("?");
  }
  return out + (s.size() > 40 ? "...\"" : "\"");
}

// An integer expression with its precedence, for printing with the fewest parentheses.
struct Expr {
  std::int64_t value;
  std::string text;
  int prec;  // 3 literal, 2 * /, 1 + -
};

inline Expr combine(const Expr& l, char op, const Expr& r, std::int64_t value) {
  const int p = (op == '+' || op == '-') ? 1 : 2;
  const std::string lt = l.prec < p ? "(" + l.text + ")" : l.text;
  const std::string rt = (r.prec < p || (r.prec == p && (op == '-' || op == '/'))) ? "(" + r.text + ")" : r.text;
  return {value, lt + " " + op + " " + rt, p};
}

// The operations allowed between two positive values when building or searching (larger value
// first for - and /): results stay positive integers, divisions exact, values <= limit; x*1 and
// x/1 are left out as they do nothing.
inline std::vector<std::pair<char, std::int64_t>> strict_ops(std::int64_t a, std::int64_t b, std::int64_t limit) {
  if (a < b) std::swap(a, b);
  std::vector<std::pair<char, std::int64_t>> ops;
  if (a + b <= limit) ops.emplace_back('+', a + b);
  if (a != b) ops.emplace_back('-', a - b);
  if (b > 1 && a <= limit / b) ops.emplace_back('*', a * b);
  if (b > 1 && a % b == 0) ops.emplace_back('/', a / b);
  return ops;
}

struct ExprError {
  std::string what;
};

struct Step {
  Rational lhs;
  char op;  // '+', '-', '*', '/'
  Rational rhs, result;
};

// Recursive descent over
//   expr := term (('+' | '-') term)*    term := factor (('*' | '/') factor)*
//   factor := digits | '(' expr ')'
// with exact fraction arithmetic (rational_op). Records the literals it reads and each operation
// it performs (in evaluation order). Throws ExprError, which evaluate() turns into a result.
// Recursion is bounded: each '(' is one level, at most max_depth of them.
class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  Rational parse() {
    const Rational v = expr(0);
    skip();
    if (pos_ != s_.size()) unexpected();
    return v;
  }

  std::vector<std::int64_t> literals;
  std::vector<Step> steps;

 private:
  static constexpr int max_depth = 64;
  std::string_view s_;
  std::size_t pos_ = 0;

  void skip() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool take(std::string_view tok) {
    if (s_.substr(pos_).starts_with(tok)) {
      pos_ += tok.size();
      return true;
    }
    return false;
  }
  [[noreturn]] void unexpected() {
    if (pos_ >= s_.size()) throw ExprError{"unexpected end of expression"};
    const auto c = static_cast<unsigned char>(s_[pos_]);
    throw ExprError{c >= 0x20 && c < 0x7F ? str("unexpected '", static_cast<char>(c), "' at byte ", pos_)
                                           : str("unexpected byte ", static_cast<int>(c), " at byte ", pos_)};
  }
  char additive() {
    skip();
    if (take("+")) return '+';
    if (take("-") || take("\xE2\x88\x92")) return '-';
    return 0;
  }
  char multiplicative() {
    skip();
    if (take("*") || take("\xC3\x97")) return '*';
    if (take("/") || take("\xC3\xB7")) return '/';
    return 0;
  }

  Rational apply(const Rational& a, char op, const Rational& b) {
    if (op == '/' && b.num == 0) throw ExprError{"division by zero"};
    const std::optional<Rational> r = rational_op(a, op, b);
    if (!r) throw ExprError{"number too large"};  // a numerator or denominator beyond int64
    steps.push_back({a, op, b, *r});
    return *r;
  }

  Rational expr(int depth) {
    Rational v = term(depth);
    for (char op; (op = additive()) != 0;) v = apply(v, op, term(depth));
    return v;
  }
  Rational term(int depth) {
    Rational v = factor(depth);
    for (char op; (op = multiplicative()) != 0;) v = apply(v, op, factor(depth));
    return v;
  }
  Rational factor(int depth) {
    skip();
    if (take("(")) {
      if (depth + 1 > max_depth) throw ExprError{"parentheses nested too deep"};
      const Rational v = expr(depth + 1);
      skip();
      if (!take(")")) {
        if (pos_ >= s_.size()) throw ExprError{"missing ')'"};
        unexpected();
      }
      return v;
    }
    if (pos_ < s_.size() && (s_[pos_] == '-' || s_.substr(pos_).starts_with("\xE2\x88\x92")))
      throw ExprError{"unary minus is not allowed"};
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') unexpected();
    std::int64_t v = 0;
    int digits = 0;
    for (; pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'; ++pos_) {
      if (++digits > 18) throw ExprError{"number too large"};  // 18 digits always fit int64
      v = v * 10 + (s_[pos_] - '0');
    }
    literals.push_back(v);
    return Rational{v};
  }
};

inline std::int64_t pow10(int d) {
  std::int64_t p = 1;
  for (int i = 0; i < d; ++i) p *= 10;
  return p;
}

inline int digit_at(const std::string& s, std::size_t i) {  // i-th digit from the right, 0 beyond
  return i < s.size() ? s[s.size() - 1 - i] - '0' : 0;
}

}  // namespace tasks_detail

// The result of evaluating an expression: ok, or an error saying why not.
struct Evaluation {
  bool ok = false;
  Rational value;                      // exact; e.g. 7 / 2 is Rational{7, 2}
  std::string error;
  std::vector<std::int64_t> literals;  // the numbers it uses, in reading order
};

// Evaluates an expression of the Countdown answer grammar exactly over the rationals. Never
// throws: malformed text, division by zero, overflow, deep nesting and over-long input give
// ok == false and an error.
inline Evaluation evaluate(std::string_view expression) {
  Evaluation e;
  if (expression.size() > 1000) {
    e.error = "expression longer than 1000 bytes";
    return e;
  }
  tasks_detail::Parser p(expression);
  try {
    e.value = p.parse();
    e.ok = true;
  } catch (const tasks_detail::ExprError& err) {
    e.error = err.what;
  }
  e.literals = std::move(p.literals);
  return e;
}

// "arithmetic 12 + 345" / "countdown 3 7 25 50 -> 128": what decides equality and the split.
inline std::string canonical(const Problem& p) {
  if (p.kind == TaskKind::arithmetic) {
    check(p.numbers.size() == 2, "tasks::canonical", "an arithmetic problem has 2 numbers, not ", p.numbers.size());
    std::int64_t a = p.numbers[0], b = p.numbers[1];
    if (p.op != '-' && a > b) std::swap(a, b);  // + and * commute
    return str("arithmetic ", a, " ", p.op, " ", b);
  }
  std::vector<std::int64_t> sorted = p.numbers;
  std::sort(sorted.begin(), sorted.end());
  return str("countdown ", tasks_detail::join(sorted), " -> ", p.target);
}

inline Split split_of(const Problem& p, double test_fraction) {
  const std::uint64_t h = tasks_detail::hash_text(canonical(p));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < test_fraction ? Split::test : Split::train;
}

// One candidate arithmetic problem for counter `index` (no split filtering).
inline Problem make_arithmetic(const ArithmeticConfig& cfg, std::uint64_t seed, std::uint64_t index) {
  const char* op_name = "tasks::make_arithmetic";
  check(cfg.min_digits >= 1 && cfg.min_digits <= cfg.max_digits && cfg.max_digits <= 9, op_name, "digits must satisfy 1 <= min_digits (",
        cfg.min_digits, ") <= max_digits (", cfg.max_digits, ") <= 9");
  check(!cfg.ops.empty() && cfg.ops.find_first_not_of("+-*") == std::string::npos, op_name, "ops \"", cfg.ops,
        "\" must be a non-empty string of + - *");
  tasks_detail::Stream rng(seed, index);
  auto operand = [&] {
    const int d = static_cast<int>(rng.uniform(cfg.min_digits, cfg.max_digits));
    return d == 1 ? rng.uniform(0, 9) : rng.uniform(tasks_detail::pow10(d - 1), tasks_detail::pow10(d) - 1);
  };
  Problem p;
  p.kind = TaskKind::arithmetic;
  const std::int64_t a = operand(), b = operand();
  p.numbers = {a, b};
  p.op = cfg.ops[static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(cfg.ops.size()) - 1))];
  p.target = p.op == '+' ? a + b : p.op == '-' ? a - b : a * b;
  p.solution = std::to_string(p.target);
  return p;
}

// One candidate Countdown problem for counter `index` (no split filtering).
inline Problem make_countdown(const CountdownConfig& cfg, std::uint64_t seed, std::uint64_t index) {
  const char* op_name = "tasks::make_countdown";
  check(cfg.min_numbers >= 2 && cfg.min_numbers <= cfg.max_numbers && cfg.max_numbers <= 8, op_name,
        "numbers must satisfy 2 <= min_numbers (", cfg.min_numbers, ") <= max_numbers (", cfg.max_numbers, ") <= 8");
  check(cfg.max_number >= 2 && cfg.max_number <= 1000000, op_name, "max_number ", cfg.max_number, " must be in [2, 1000000]");
  check(cfg.min_target >= 1 && cfg.min_target <= cfg.max_target && cfg.max_target <= cfg.max_intermediate &&
            cfg.max_intermediate <= (std::int64_t(1) << 40),
        op_name, "targets must satisfy 1 <= min_target (", cfg.min_target, ") <= max_target (", cfg.max_target,
        ") <= max_intermediate (", cfg.max_intermediate, ") <= 2^40");
  tasks_detail::Stream rng(seed, index);
  for (int attempt = 0; attempt < 10000; ++attempt) {
    const auto n = static_cast<std::size_t>(rng.uniform(cfg.min_numbers, cfg.max_numbers));
    std::vector<std::int64_t> numbers(n);
    for (auto& x : numbers) x = rng.uniform(1, cfg.max_number);
    // A random expression over all the numbers (each exactly once, as answers must): combine two
    // random entries of the pool until one is left.
    std::vector<tasks_detail::Expr> pool;
    for (const std::int64_t x : numbers) pool.push_back({x, std::to_string(x), 3});
    while (pool.size() > 1) {
      const auto i = static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(pool.size()) - 1));
      auto j = static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(pool.size()) - 2));
      if (j >= i) ++j;
      tasks_detail::Expr a = pool[i], b = pool[j];
      const auto ops = tasks_detail::strict_ops(a.value, b.value, cfg.max_intermediate);
      if (ops.empty()) break;  // both too large to add: start over
      const auto [op, value] = ops[static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(ops.size()) - 1))];
      if (a.value < b.value) std::swap(a, b);
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(std::max(i, j)));
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(std::min(i, j)));
      pool.push_back(tasks_detail::combine(a, op, b, value));
    }
    if (pool.size() != 1) continue;
    const std::int64_t target = pool[0].value;
    if (target < cfg.min_target || target > cfg.max_target) continue;
    if (std::find(numbers.begin(), numbers.end(), target) != numbers.end()) continue;
    std::sort(numbers.begin(), numbers.end());
    Problem p;
    p.kind = TaskKind::countdown;
    p.numbers = std::move(numbers);
    p.target = target;
    p.solution = pool[0].text;
    return p;
  }
  fail(op_name, "no target in [", cfg.min_target, ", ", cfg.max_target, "] found in 10000 attempts; widen the range");
}

namespace tasks_detail {

template <class Make>
Problem sample_split(Make make, double test_fraction, Generator& gen, Split split, const char* op) {
  check(test_fraction > 0.0 && test_fraction < 1.0, op, "test_fraction ", test_fraction, " must be in (0, 1)");
  constexpr int max_draws = 1 << 16;
  for (int draw = 0; draw < max_draws; ++draw) {
    Problem p = make(gen.seed, gen.take(1));
    if (split_of(p, test_fraction) == split) return p;
  }
  fail(op, "no problem of the ", split == Split::test ? "test" : "train", " split in ", max_draws,
       " draws: the problem space is too small for test_fraction ", test_fraction);
}

}  // namespace tasks_detail

inline Problem sample_arithmetic(const ArithmeticConfig& cfg, Generator& gen, Split split) {
  return tasks_detail::sample_split([&](std::uint64_t s, std::uint64_t i) { return make_arithmetic(cfg, s, i); },
                                    cfg.test_fraction, gen, split, "tasks::sample_arithmetic");
}

inline Problem sample_countdown(const CountdownConfig& cfg, Generator& gen, Split split) {
  return tasks_detail::sample_split([&](std::uint64_t s, std::uint64_t i) { return make_countdown(cfg, s, i); },
                                    cfg.test_fraction, gen, split, "tasks::sample_countdown");
}

inline Problem sample(const TaskMix& mix, Generator& gen, Split split) {
  check(mix.countdown_fraction >= 0.0 && mix.countdown_fraction <= 1.0, "tasks::sample", "countdown_fraction ",
        mix.countdown_fraction, " must be in [0, 1]");
  const bool countdown = uniform_at(gen.seed, gen.take(1)) < mix.countdown_fraction;
  return countdown ? sample_countdown(mix.countdown, gen, split) : sample_arithmetic(mix.arithmetic, gen, split);
}

// n distinct problems of `split` (distinct by canonical(): 3 + 5 and 5 + 3 are one problem), in the
// order sample() draws them, repeats skipped. For held-out sets: a problem drawn twice would count
// twice, while the evaluation's intervals take problems as independent units (rl/evaluation.hpp);
// with 1-2 digit arithmetic a quarter of the draws have two 1-digit operands, and the test split
// holds only about 30 such problems, so 200 plain draws repeat some of them several times. Throws
// when 65536 draws in a row bring nothing new (the split holds fewer than n problems of the mix).
inline std::vector<Problem> sample_distinct(const TaskMix& mix, Generator& gen, Split split, std::int64_t n) {
  const char* op = "tasks::sample_distinct";
  check(n >= 0, op, "needs n >= 0 problems, got ", n);
  std::vector<Problem> out;
  std::unordered_set<std::string> seen;
  constexpr int max_misses = 1 << 16;
  for (int misses = 0; static_cast<std::int64_t>(out.size()) < n;) {
    Problem p = sample(mix, gen, split);
    if (seen.insert(canonical(p)).second) {
      out.push_back(std::move(p));
      misses = 0;
    } else if (++misses == max_misses) {
      fail(op, "asked for ", n, " distinct problems of the ", split == Split::test ? "test" : "train", " split, found ",
           out.size(), " (no new one in ", max_misses, " draws): the mix's problem space is too small");
    }
  }
  return out;
}

// The prompt; it ends with "\n", after which the completion starts.
inline std::string prompt(const Problem& p) {
  if (p.kind == TaskKind::arithmetic)
    return str("Arithmetic: compute ", p.numbers.at(0), " ", p.op, " ", p.numbers.at(1), ".\n");
  return str("Countdown: use ", tasks_detail::join(p.numbers), " to make ", p.target, ".\n");
}

// A completion split into its blocks, or why it does not have the expected shape.
struct ParsedCompletion {
  bool ok = false;
  std::string think, answer, error;
};

inline ParsedCompletion parse_completion(std::string_view text) {
  ParsedCompletion r;
  static constexpr std::array<std::string_view, 4> tags = {"<think>", "</think>", "<answer>", "</answer>"};
  auto skip_space = [&](std::size_t i) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
    return i;
  };
  auto has_tag = [&](std::string_view s) {
    return std::any_of(tags.begin(), tags.end(), [&](std::string_view t) { return s.find(t) != std::string_view::npos; });
  };
  std::size_t i = skip_space(0);
  if (!text.substr(i).starts_with(tags[0])) {
    r.error = "does not start with <think>";
    return r;
  }
  i += tags[0].size();
  const std::size_t think_end = text.find(tags[1], i);
  if (think_end == std::string_view::npos) {
    r.error = "missing </think>";
    return r;
  }
  const std::string_view think = text.substr(i, think_end - i);
  if (has_tag(think)) {
    r.error = "a tag inside the think block";
    return r;
  }
  i = skip_space(think_end + tags[1].size());
  if (!text.substr(i).starts_with(tags[2])) {
    r.error = "no <answer> after </think>";
    return r;
  }
  i += tags[2].size();
  const std::size_t answer_end = text.find(tags[3], i);
  if (answer_end == std::string_view::npos) {
    r.error = "missing </answer>";
    return r;
  }
  const std::string_view answer = text.substr(i, answer_end - i);
  if (has_tag(answer)) {
    r.error = "a tag inside the answer block";
    return r;
  }
  if (skip_space(answer_end + tags[3].size()) != text.size()) {
    r.error = "text after </answer>";
    return r;
  }
  r.ok = true;
  r.think = std::string(think);
  r.answer = std::string(answer);
  return r;
}

// The content of the last complete answer block of `text`: the text between an "<answer>" and
// the next "</answer>" with no other "<answer>" in between, taking the last such pair; nullopt
// when there is none. A "</answer>" with no open "<answer>" before it closes nothing, so in
// "<answer>1</answer></answer>" the block is "1", and in "<answer>1<answer>2</answer>" it is "2".
// One pass over the '<' bytes of the text, each compared with two tags: linear time, whatever the
// text (e.g. 200k characters of "<answer><answer>...").
inline std::optional<std::string_view> last_answer(std::string_view text) {
  static constexpr std::string_view open = "<answer>", close = "</answer>";
  std::optional<std::string_view> found;
  std::size_t content = std::string_view::npos;  // where the open block's content starts, if any
  for (std::size_t i = text.find('<'); i != std::string_view::npos; i = text.find('<', i + 1)) {
    const std::string_view rest = text.substr(i);
    if (rest.starts_with(open)) {
      content = i + open.size();
    } else if (rest.starts_with(close) && content != std::string_view::npos) {
      found = text.substr(content, i - content);
      content = std::string_view::npos;
    }
  }
  return found;
}

// Whether `answer` (the text inside <answer>) solves the problem; `reason` says why not.
inline bool check_answer(const Problem& p, std::string_view answer, std::string* reason = nullptr) {
  auto wrong = [&](std::string why) {
    if (reason) *reason = std::move(why);
    return false;
  };
  const std::string a = tasks_detail::trim(answer);
  if (a.empty()) return wrong("empty answer");
  if (p.kind == TaskKind::arithmetic) {
    if (a != std::to_string(p.target)) return wrong(str("expected ", p.target, ", got ", tasks_detail::quote(a)));
  } else {
    std::string_view expression = a;
    const std::size_t eq = a.find('=');
    if (eq != std::string::npos) {  // "expression = target"
      const std::string rhs = tasks_detail::trim(std::string_view(a).substr(eq + 1));
      if (rhs != std::to_string(p.target)) return wrong(str("the answer ends in \"= ", tasks_detail::quote(rhs), "\", not the target"));
      expression = std::string_view(a).substr(0, eq);
    }
    const Evaluation e = evaluate(expression);
    if (!e.ok) return wrong(e.error);
    // Each given number exactly once: the literals must be the numbers as a multiset.
    std::vector<std::int64_t> left = p.numbers;
    for (const std::int64_t x : e.literals) {
      const auto it = std::find(left.begin(), left.end(), x);
      if (it == left.end())
        return wrong(std::find(p.numbers.begin(), p.numbers.end(), x) == p.numbers.end()
                         ? str(x, " is not one of the numbers")
                         : str(x, " is used more often than given"));
      left.erase(it);
    }
    if (!left.empty()) return wrong(str("not every number is used: ", tasks_detail::join(left), " left over"));
    if (e.value != Rational{p.target}) return wrong(str("the expression makes ", e.value, ", not ", p.target));
  }
  if (reason) *reason = "correct";
  return true;
}

// The rule-based reward of a completion (the text after the prompt). Never throws on any text.
inline Reward verify(const Problem& p, std::string_view completion) {
  Reward r;
  const ParsedCompletion c = parse_completion(completion);
  if (!c.ok) {
    r.reason = c.error;
    return r;
  }
  r.format = 1.0;
  if (check_answer(p, c.answer, &r.reason)) r.accuracy = 1.0;
  return r;
}

namespace tasks_detail {

inline std::string worked_addition(std::int64_t a, std::int64_t b) {
  const std::string A = std::to_string(a), B = std::to_string(b);
  std::string s = str("Add ", a, " and ", b, " column by column from the right.\n");
  int carry = 0;
  for (std::size_t i = 0; i < std::max(A.size(), B.size()); ++i) {
    const int x = digit_at(A, i), y = digit_at(B, i), sum = x + y + carry;
    s += str(x, " + ", y, carry ? " + 1" : "", " = ", sum, ", write ", sum % 10, sum >= 10 ? ", carry 1.\n" : ".\n");
    carry = sum / 10;
  }
  if (carry) s += "Write the carry 1.\n";
  return s + str("So ", a, " + ", b, " = ", a + b, ".");
}

inline std::string worked_subtraction(std::int64_t a, std::int64_t b) {
  if (a < b)
    return str("Since ", a, " < ", b, ", compute ", b, " - ", a, " and negate it.\n", worked_subtraction(b, a), "\nSo ", a,
               " - ", b, " = ", a - b, ".");
  const std::string A = std::to_string(a), B = std::to_string(b);
  std::string s = str("Subtract ", b, " from ", a, " column by column from the right.\n");
  int borrow = 0;
  for (std::size_t i = 0; i < A.size(); ++i) {
    const int x = digit_at(A, i), y = digit_at(B, i), d = x - borrow - y;
    const std::string lhs = str(x, borrow ? " - 1" : "", " - ", y);
    if (d < 0) {
      s += str(lhs, " is negative, borrow 10: ", x + 10, borrow ? " - 1" : "", " - ", y, " = ", d + 10, ", write ", d + 10, ".\n");
      borrow = 1;
    } else {
      s += str(lhs, " = ", d, ", write ", d, ".\n");
      borrow = 0;
    }
  }
  if (std::to_string(a - b).size() < A.size()) s += "Drop the leading zeros.\n";
  return s + str("So ", a, " - ", b, " = ", a - b, ".");
}

// a * d for one digit d, digit by digit.
inline std::string worked_times_digit(std::int64_t a, int d) {
  const std::string A = std::to_string(a);
  std::string s = str(a, " * ", d, ": ");
  std::int64_t carry = 0;
  for (std::size_t i = 0; i < A.size(); ++i) {
    const std::int64_t x = digit_at(A, i), p = x * d + carry;
    s += str(x, " * ", d, carry ? str(" + ", carry) : "", " = ", p);
    if (i + 1 == A.size()) {
      s += str(", write ", p, ". ");
    } else {
      s += str(", write ", p % 10, p / 10 ? str(", carry ", p / 10) : "", "; ");
    }
    carry = p / 10;
  }
  return s;
}

inline std::string worked_multiplication(std::int64_t a, std::int64_t b) {
  const std::string B = std::to_string(b);
  if (B.size() == 1) return str("Multiply ", a, " by ", b, ".\n", a == 0 || b == 0 ? "" : worked_times_digit(a, static_cast<int>(b)), "So ", a, " * ", b, " = ", a * b, ".");
  std::string s = str("Multiply ", a, " by each digit of ", b, " from the right.\n");
  std::vector<std::int64_t> partials;
  for (std::size_t i = 0; i < B.size(); ++i) {
    const int d = digit_at(B, i);
    const std::int64_t p = a * d;
    if (d == 0 || a == 0) {
      s += str(a, " * ", d, " = 0.\n");
    } else {
      s += worked_times_digit(a, d) + str("So ", a, " * ", d, " = ", p, ".\n");
    }
    const std::int64_t shifted = p * pow10(static_cast<int>(i));
    if (i > 0 && p != 0) s += str("Shift by ", i, ": ", shifted, ".\n");
    partials.push_back(shifted);
  }
  if (partials.size() > 1) {
    s += "Add the partial products.\n";
    std::int64_t sum = partials[0];
    for (std::size_t i = 1; i < partials.size(); ++i) {
      s += str(sum, " + ", partials[i], " = ", sum + partials[i], ".\n");
      sum += partials[i];
    }
  }
  return s + str("So ", a, " * ", b, " = ", a * b, ".");
}

// The numbers left (integers, or fractions for a solution with fractional steps), ascending.
template <class T>
std::string left_text(std::vector<T> pool) {
  std::sort(pool.begin(), pool.end());
  std::string s;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    if (i) s += ' ';
    s += str(pool[i]);
  }
  return s;
}

template <class T>
void remove_one(std::vector<T>& pool, const T& x) {
  const auto it = std::find(pool.begin(), pool.end(), x);
  if (it != pool.end()) pool.erase(it);
}

inline std::string worked_countdown(const Problem& p) {
  check(!p.numbers.empty(), "tasks::worked_solution", "a Countdown problem without numbers");
  std::string s = str("Use ", join(p.numbers), " to make ", p.target, ".\n");
  // Up to two failed attempts: random combinations of all the numbers (strict rules) that never
  // meet the target, drawn from a stream keyed by the problem so the text is deterministic.
  Stream rng(hash_text(canonical(p)), 0);
  const std::int64_t limit = 10 * std::max(p.target, *std::max_element(p.numbers.begin(), p.numbers.end()));
  std::vector<std::string> shown;
  for (int attempt = 0; attempt < 6 && shown.size() < 2; ++attempt) {
    std::vector<std::int64_t> pool = p.numbers;
    std::string lines;
    bool failed = true;
    while (pool.size() > 1) {
      const auto i = static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(pool.size()) - 1));
      auto j = static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(pool.size()) - 2));
      if (j >= i) ++j;
      std::int64_t a = std::max(pool[i], pool[j]), b = std::min(pool[i], pool[j]);
      const auto ops = strict_ops(a, b, limit);
      if (ops.empty()) break;
      const auto [op, value] = ops[static_cast<std::size_t>(rng.uniform(0, static_cast<std::int64_t>(ops.size()) - 1))];
      remove_one(pool, a);
      remove_one(pool, b);
      pool.push_back(value);
      lines += str(lines.empty() ? "Try " : "", a, " ", op, " ", b, " = ", value, ", left ", left_text(pool), ".\n");
      if (value == p.target) failed = false;
    }
    if (!failed || pool.size() != 1 || std::find(shown.begin(), shown.end(), lines) != shown.end()) continue;
    s += lines + str("No ", p.target, " this way.\n");
    shown.push_back(std::move(lines));
  }
  // The solution's steps, in evaluation order.
  Parser parser(p.solution);
  try {
    parser.parse();
  } catch (const ExprError& e) {
    fail("tasks::worked_solution", "the problem's solution \"", p.solution, "\" does not parse: ", e.what);
  }
  std::vector<Rational> pool;
  for (const std::int64_t x : p.numbers) pool.push_back(Rational{x});
  for (std::size_t k = 0; k < parser.steps.size(); ++k) {
    const Step& st = parser.steps[k];
    remove_one(pool, st.lhs);
    remove_one(pool, st.rhs);
    pool.push_back(st.result);
    s += str(k == 0 ? "Try " : "", st.lhs, " ", st.op, " ", st.rhs, " = ", st.result);
    s += k + 1 == parser.steps.size() ? str(". That makes ", p.target, ".\n") : str(", left ", left_text(pool), ".\n");
  }
  return s;
}

}  // namespace tasks_detail

// The expected completion with step-by-step reasoning: "<think>...</think><answer>...</answer>".
inline std::string worked_solution(const Problem& p) {
  std::string think;
  if (p.kind == TaskKind::countdown) {
    think = tasks_detail::worked_countdown(p);
    think.pop_back();  // the last newline
  } else {
    check(p.numbers.size() == 2, "tasks::worked_solution", "an arithmetic problem has 2 numbers, not ", p.numbers.size());
    const std::int64_t a = p.numbers[0], b = p.numbers[1];
    think = p.op == '+' ? tasks_detail::worked_addition(a, b)
            : p.op == '-' ? tasks_detail::worked_subtraction(a, b)
                          : tasks_detail::worked_multiplication(a, b);
  }
  return "<think>" + think + "</think><answer>" + p.solution + "</answer>";
}

// The completion without reasoning: "<think></think><answer>...</answer>" (well-formed: the think
// block may be empty).
inline std::string direct_solution(const Problem& p) { return "<think></think><answer>" + p.solution + "</answer>"; }

// Prompt and worked solution: one pretraining document.
inline std::string training_text(const Problem& p) { return prompt(p) + worked_solution(p); }

// `count` pretraining documents of the given split, drawn from `gen`. A fraction `direct_fraction`
// of them answer at once (direct_solution) instead of working the steps: a base model trained on
// both has two modes, and on problems where a small model's immediate answers are often wrong
// (multi-digit products, Countdown) the worked mode is right more often, so RL on accuracy shifts
// it towards the longer completions: response length rises with reward, as in R1-Zero. With
// direct_fraction 0 the corpus (and gen's draws) are those of worked solutions alone.
inline std::vector<std::string> worked_corpus(const TaskMix& mix, Generator& gen, std::size_t count, Split split = Split::train,
                                              double direct_fraction = 0.0) {
  check(direct_fraction >= 0.0 && direct_fraction <= 1.0, "tasks::worked_corpus", "direct_fraction ", direct_fraction,
        " must be in [0, 1]");
  std::vector<std::string> docs;
  docs.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const Problem p = sample(mix, gen, split);
    const bool direct = direct_fraction > 0.0 && uniform_at(gen.seed, gen.take(1)) < direct_fraction;
    docs.push_back(direct ? prompt(p) + direct_solution(p) : training_text(p));
  }
  return docs;
}

}  // namespace kiln::data
