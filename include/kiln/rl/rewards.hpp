// Rule-based rewards for the GRPO trainer (DeepSeek-R1-Zero style): the prompt template, a format
// reward, a per-task accuracy reward, and RewardSet, which evaluates weighted reward functions
// (these built-ins or any user callable) over a batch of completions. The tasks themselves (their
// generators, prompts, answer rules and the verifier these rewards are built on) live in
// data/tasks.hpp.
//
// Template. The prompt is one instruction line followed by the task's own prompt line:
//     Reason in <think> </think>, then answer in <answer> </answer>.
//     Countdown: use 3 7 25 50 to make 128.
// and ends with "\n". The completion (the model's text after the prompt) opens the think block
// itself: a completion that follows the template starts with "<think>", just as every pretraining
// document continues its prompt line (data::training_text). So the prompt does NOT end with
// "<think>" (r1_zero_prompt_ends_with_think == false); a trainer that wanted the model to start
// inside the think block would have to prepend "<think>" to each completion before scoring it.
// The generation engine stops on "</answer>" and keeps it, so a completion that followed the
// template ends with "</answer>"; one that ran out of tokens has no complete answer block.
//
// Well-formed (format reward 1, else 0): data::parse_completion accepts the completion,
//     ws* "<think>" T "</think>" ws* "<answer>" A "</answer>" ws*
// where ws is a space, tab, CR or LF, and neither T nor A contains any of the four tags (compared
// exactly, lower case). So: exactly one think block, then exactly one answer block, nothing but
// whitespace around them, no nested or repeated tags. This is data::verify's format rule.
//
// Accuracy. The content of the LAST complete <answer>...</answer> block (data::last_answer) is
// graded by the task's rule (data::check_answer): for arithmetic, the exact integer (surrounding
// whitespace allowed; "0408", "+408", "408.0" are wrong); for Countdown, an expression of integers
// with + - * / (also × ÷ −) and parentheses that uses each given number exactly once and evaluates
// exactly, over the rationals, to the target (optionally followed by "= target"). Scores
// (RewardScores, configurable):
//   correct    (1.0)  the block's content is correct, whatever the rest of the completion is;
//   wrong      (0.1)  the completion is well-formed but its answer is wrong;
//   malformed  (0.0)  otherwise: no complete answer block, or a wrong answer in a completion that
//                     is not well-formed.
// So format and accuracy are separate signals, as in R1-Zero, and the 0.1 rewards the template
// only together with an answer. On a well-formed completion the last block is its only answer
// block, so accuracy is `correct` exactly when data::verify's accuracy is 1.
//
// Bounded time. Every built-in reward is linear in the completion's length: the format check is a
// few forward scans with fixed tags, last_answer one pass over the '<' bytes, the arithmetic rule a
// string comparison, and the Countdown parser never sees more than 1000 bytes nor recurses more
// than 64 parentheses deep. Overflow, division by zero, 5000-digit numbers, deep nesting, control
// bytes and invalid UTF-8 all end as a wrong answer, never an exception, a hang or a crash.
//
// User rewards. A RewardFunction is a name, a weight and a callable
//     double(const data::Problem&, std::string_view completion)
// RewardSet::evaluate calls every function on every completion and returns the raw values per
// function (for logging mean and std of each) and the weighted total per completion (the reward
// GRPO normalises within each group). A user callable that throws, or returns NaN or an infinity,
// stops the evaluation with a kiln::Error naming the function and the completion.
#pragma once

#include <cmath>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/data/tasks.hpp"
#include "kiln/data/tokenizer.hpp"

namespace kiln::rl {

// ---- the R1-Zero template -----------------------------------------------------------------------

// The instruction line that precedes the task's prompt. Short: the models are tiny.
inline constexpr std::string_view r1_zero_instruction = "Reason in <think> </think>, then answer in <answer> </answer>.\n";

// Whether r1_zero_prompt ends with "<think>" (so that completions would start inside the think
// block). It does not: completions start with "<think>" themselves, as in the pretraining corpus.
inline constexpr bool r1_zero_prompt_ends_with_think = false;

// The R1-Zero prompt for a problem: r1_zero_instruction + data::prompt(p), ending with "\n".
inline std::string r1_zero_prompt(const data::Problem& p) { return std::string(r1_zero_instruction) + data::prompt(p); }

// The prompt's token ids: bos (when the tokenizer has one, as the pretraining documents begin)
// followed by the tokens of r1_zero_prompt(p).
inline std::vector<std::int64_t> encode_r1_zero_prompt(const data::Tokenizer& tok, const data::Problem& p) {
  std::vector<std::int64_t> ids;
  if (tok.bos_id()) ids.push_back(*tok.bos_id());
  const std::vector<std::int64_t> text = tok.encode(r1_zero_prompt(p));
  ids.insert(ids.end(), text.begin(), text.end());
  return ids;
}

// ---- the built-in rewards -----------------------------------------------------------------------

// The accuracy reward's three levels (see the header comment). Any finite values.
struct RewardScores {
  double correct = 1.0;    // the last complete answer block is correct
  double wrong = 0.1;      // well-formed, but the answer is wrong
  double malformed = 0.0;  // no complete answer block, or wrong and not well-formed
};

enum class Outcome { correct, wrong, malformed };

// The accuracy reward of one completion with its reason, for logs and sample dumps.
struct Grade {
  Outcome outcome = Outcome::malformed;
  double score = 0.0;  // the RewardScores value of `outcome`
  std::string reason;  // "correct", or why not (e.g. "not every number is used: 3 left over")
};

// Whether the completion has the template's shape (data::parse_completion). Linear time.
inline bool well_formed(std::string_view completion) { return data::parse_completion(completion).ok; }

// The format reward: 1 when the completion is well-formed, else 0.
inline double format_score(std::string_view completion) { return well_formed(completion) ? 1.0 : 0.0; }

// Grades the last complete answer block of `completion` against the problem. Never throws on any
// completion text (it throws kiln::Error only for non-finite scores).
inline Grade grade(const data::Problem& p, std::string_view completion, const RewardScores& scores = {}) {
  check(std::isfinite(scores.correct) && std::isfinite(scores.wrong) && std::isfinite(scores.malformed), "rl::grade",
        "reward scores must be finite, got correct ", scores.correct, ", wrong ", scores.wrong, ", malformed ", scores.malformed);
  Grade g;
  const std::optional<std::string_view> answer = data::last_answer(completion);
  if (!answer) {
    g.score = scores.malformed;
    g.reason = "no complete <answer>...</answer> block";
    return g;
  }
  if (data::check_answer(p, *answer, &g.reason)) {
    g.outcome = Outcome::correct;
    g.score = scores.correct;
    return g;
  }
  const data::ParsedCompletion parsed = data::parse_completion(completion);
  if (parsed.ok) {
    g.outcome = Outcome::wrong;
    g.score = scores.wrong;
  } else {
    g.score = scores.malformed;
    g.reason = str("wrong (", g.reason, ") and malformed (", parsed.error, ")");
  }
  return g;
}

// The accuracy reward: grade(p, completion, scores).score.
inline double accuracy_score(const data::Problem& p, std::string_view completion, const RewardScores& scores = {}) {
  return grade(p, completion, scores).score;
}

// ---- reward functions and sets ------------------------------------------------------------------

// A reward: value = fn(problem, completion), where completion is the model's text after the prompt.
using RewardFn = std::function<double(const data::Problem&, std::string_view completion)>;

struct RewardFunction {
  std::string name;    // unique within a RewardSet; names the function in logs and errors
  double weight = 1.0;  // its factor in the total reward (finite; may be 0 to log a value only)
  RewardFn fn;
};

// The format reward as a RewardFunction named "format" (values 1 or 0).
inline RewardFunction format_reward(double weight = 1.0) {
  return {"format", weight, [](const data::Problem&, std::string_view completion) { return format_score(completion); }};
}

// The accuracy reward as a RewardFunction named "accuracy" (values scores.correct, .wrong or
// .malformed).
inline RewardFunction accuracy_reward(const RewardScores& scores = {}, double weight = 1.0) {
  check(std::isfinite(scores.correct) && std::isfinite(scores.wrong) && std::isfinite(scores.malformed),
        "rl::accuracy_reward", "reward scores must be finite, got correct ", scores.correct, ", wrong ", scores.wrong,
        ", malformed ", scores.malformed);
  return {"accuracy", weight,
          [scores](const data::Problem& p, std::string_view completion) { return accuracy_score(p, completion, scores); }};
}

// Mean and (population) standard deviation of one function's values over a batch.
struct RewardStats {
  std::string name;
  double mean = 0.0, std = 0.0;
};

// What RewardSet::evaluate returns for a batch of completions.
struct RewardBatch {
  std::vector<std::string> names;           // the functions, in the set's order
  std::vector<double> weights;              // their weights
  std::vector<std::vector<double>> values;  // values[f][i]: function f on completion i, unweighted
  std::vector<double> total;                // total[i] = sum over f of weights[f] * values[f][i]

  std::size_t size() const { return total.size(); }

  // The values of the function called `name`; kiln::Error when there is none.
  const std::vector<double>& of(std::string_view name) const {
    for (std::size_t f = 0; f < names.size(); ++f)
      if (names[f] == name) return values[f];
    fail("rl::RewardBatch::of", "no reward function named \"", name, "\"");
  }

  // Mean and std of each function's values, in order, then of the total (named "total").
  std::vector<RewardStats> stats() const {
    auto summarise = [](std::string name, const std::vector<double>& v) {
      RewardStats s{std::move(name), 0.0, 0.0};
      if (v.empty()) return s;
      for (const double x : v) s.mean += x;
      s.mean /= static_cast<double>(v.size());
      double var = 0.0;
      for (const double x : v) var += (x - s.mean) * (x - s.mean);
      s.std = std::sqrt(var / static_cast<double>(v.size()));
      return s;
    };
    std::vector<RewardStats> out;
    for (std::size_t f = 0; f < names.size(); ++f) out.push_back(summarise(names[f], values[f]));
    out.push_back(summarise("total", total));
    return out;
  }
};

// Weighted reward functions evaluated together.
class RewardSet {
 public:
  RewardSet() = default;
  explicit RewardSet(std::vector<RewardFunction> functions) {
    for (RewardFunction& f : functions) add(std::move(f));
  }

  // Adds a function; kiln::Error for an empty or repeated name, a non-finite weight or no callable.
  RewardSet& add(RewardFunction f) {
    const char* op = "rl::RewardSet::add";
    check(!f.name.empty(), op, "a reward function needs a name");
    check(static_cast<bool>(f.fn), op, "reward function \"", f.name, "\" has no callable");
    check(std::isfinite(f.weight), op, "reward function \"", f.name, "\" has weight ", f.weight, "; weights must be finite");
    for (const RewardFunction& g : functions_)
      check(g.name != f.name, op, "a reward function named \"", f.name, "\" is already in the set");
    functions_.push_back(std::move(f));
    return *this;
  }
  RewardSet& add(std::string name, double weight, RewardFn fn) { return add({std::move(name), weight, std::move(fn)}); }

  const std::vector<RewardFunction>& functions() const { return functions_; }
  std::size_t size() const { return functions_.size(); }
  bool empty() const { return functions_.empty(); }

  // Evaluates every function on every completion. Completions come in groups of `group_size`
  // consecutive ones per problem, as GRPO samples them: completion i answers problems[i / group_size],
  // and completions.size() must be problems.size() * group_size. Functions run in the set's order,
  // each over the completions in order, on the calling thread.
  RewardBatch evaluate(std::span<const data::Problem> problems, std::span<const std::string> completions,
                       std::size_t group_size = 1) const {
    const char* op = "rl::RewardSet::evaluate";
    check(!functions_.empty(), op, "the reward set has no functions");
    check(group_size >= 1, op, "group_size must be at least 1");
    check(completions.size() == problems.size() * group_size, op, completions.size(), " completions for ", problems.size(),
          " problems in groups of ", group_size, " (expected ", problems.size() * group_size, ")");
    RewardBatch batch;
    batch.total.assign(completions.size(), 0.0);
    for (const RewardFunction& f : functions_) {
      batch.names.push_back(f.name);
      batch.weights.push_back(f.weight);
      std::vector<double>& values = batch.values.emplace_back(completions.size(), 0.0);
      for (std::size_t i = 0; i < completions.size(); ++i) {
        values[i] = call(f, problems[i / group_size], completions[i], i);
        batch.total[i] += f.weight * values[i];
      }
    }
    return batch;
  }

 private:
  std::vector<RewardFunction> functions_;

  // One call of a reward function, with any failure reported as a kiln::Error naming it.
  static double call(const RewardFunction& f, const data::Problem& p, std::string_view completion, std::size_t i) {
    const char* op = "rl::RewardSet::evaluate";
    double v = 0.0;
    try {
      v = f.fn(p, completion);
    } catch (const std::exception& e) {
      fail(op, "reward function \"", f.name, "\" threw on completion ", i, ": ", e.what());
    } catch (...) {
      fail(op, "reward function \"", f.name, "\" threw on completion ", i, " (not a std::exception)");
    }
    check(std::isfinite(v), op, "reward function \"", f.name, "\" returned ", v, " on completion ", i, "; rewards must be finite");
    return v;
  }
};

// The R1-Zero rewards: accuracy (weight 1) and format (weight format_weight). With the defaults a
// well-formed correct completion gets 1.5, a malformed correct one 1.0, a well-formed wrong one 0.6
// and anything else 0: being right always counts for more than the shape.
inline RewardSet r1_zero_rewards(const RewardScores& scores = {}, double format_weight = 0.5) {
  return RewardSet({accuracy_reward(scores, 1.0), format_reward(format_weight)});
}

}  // namespace kiln::rl
