// Held-out evaluation of a policy on verifiable problems, the three figures DeepSeek-R1 reports
// (R1 paper, §3.1 evaluation setup), each with a 95% interval (rl/evaluation.hpp):
//   pass@1   the mean over problems of the fraction of k samples that are correct (sampling at
//            temperature 0.6, top-p 0.95, the R1 setting); interval: bootstrap over problems;
//   cons@k   the majority vote of the k samples' answers (answer_key below) is correct; Wilson;
//   greedy   the greedy completion is correct; Wilson;
// plus the mean completion length (tokens) of the sampled completions with a bootstrap interval,
// and the fraction of them in the R1-Zero format.
//
// A sample is correct when the accuracy reward grades its last answer block correct
// (rl/rewards.hpp, grade): format is not required for correctness.
#pragma once

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kiln/data/tasks.hpp"
#include "kiln/data/tokenizer.hpp"
#include "kiln/infer/engine.hpp"
#include "kiln/io/json.hpp"
#include "kiln/rl/evaluation.hpp"
#include "kiln/rl/rewards.hpp"

namespace kiln::rl {

struct PolicyEvalOptions {
  std::int64_t k = 8;              // samples per problem for pass@1 and cons@k
  double temperature = 0.6;
  double top_p = 0.95;
  bool greedy = true;              // also the greedy accuracy
  std::int64_t max_new_tokens = 256;
  std::vector<std::string> stop_strings = {"</answer>"};
  std::uint64_t seed = 0;
  std::int64_t generation_batch = 0;  // engine max_batch (0: everything at once)
  bool cuda_graphs = true;            // GPU: the engine replays decode steps as CUDA graphs
  std::uint64_t sample_id_base = 1ull << 62;  // far from training's ids
  // A problem's prompt as token ids (default: bos, then the R1-Zero template; as in training).
  std::function<std::vector<std::int64_t>(const data::Problem&)> encode_prompt = nullptr;
};

struct PolicyEvalReport {
  std::int64_t problems = 0, k = 0;
  Interval pass_at_1, cons_at_k, greedy, mean_length;
  double format_rate = 0;  // sampled completions in the R1-Zero format
  // Each problem's fraction of correct samples, in the problems' order (pass@1 is their mean): two
  // models evaluated on the same problems compare through paired_difference_interval.
  std::vector<double> per_problem;
};

// The report as JSON (reports and run folders: examples/grpo, examples/r1_pipeline): problems, k,
// each interval as {estimate, lo, hi}, format_rate, and the per-problem rates (per_problem_pass_at_1).
inline io::ordered_json to_json(const PolicyEvalReport& r) {
  auto interval = [](const Interval& i) { return io::ordered_json{{"estimate", i.estimate}, {"lo", i.lo}, {"hi", i.hi}}; };
  io::ordered_json j;
  j["problems"] = r.problems;
  j["k"] = r.k;
  j["pass_at_1"] = interval(r.pass_at_1);
  j["cons_at_k"] = interval(r.cons_at_k);
  j["greedy"] = interval(r.greedy);
  j["mean_length"] = interval(r.mean_length);
  j["format_rate"] = r.format_rate;
  j["per_problem_pass_at_1"] = r.per_problem;
  return j;
}

// The key a sample votes with in cons@k: answers that mean the same vote together, and samples
// with one key always agree on correctness (majority_vote requires it). Arithmetic: the trimmed
// answer text. Countdown: the exact value of the expression, marked "=" when the answer is correct
// and "~" when it evaluates but breaks a rule (a number used twice reaching the target), so two
// correct expressions agree; text that does not evaluate votes as itself. No answer block: ""
// (no vote).
inline std::string answer_key(const data::Problem& p, std::string_view completion, bool correct) {
  const std::optional<std::string_view> answer = data::last_answer(completion);
  if (!answer) return "";
  const std::string text = data::tasks_detail::trim(*answer);
  if (p.kind == data::TaskKind::countdown) {
    const data::Evaluation e = data::evaluate(text);
    if (e.ok) {
      std::ostringstream key;
      key << (correct ? '=' : '~') << e.value;
      return key.str();
    }
  }
  return text;
}

template <class Model>
PolicyEvalReport evaluate_policy(const Model& model, const data::Tokenizer& tokenizer,
                                 const std::vector<data::Problem>& problems, const PolicyEvalOptions& options) {
  const char* op = "evaluate_policy";
  check(!problems.empty(), op, "needs at least one problem");
  check(options.k >= 1, op, "k must be >= 1, got ", options.k);
  std::vector<std::vector<std::int64_t>> prompts;
  for (const auto& p : problems)
    prompts.push_back(options.encode_prompt ? options.encode_prompt(p) : encode_r1_zero_prompt(tokenizer, p));
  infer::SamplingParams sampling;
  sampling.temperature = options.temperature;
  sampling.top_p = options.top_p;
  sampling.max_new_tokens = options.max_new_tokens;
  sampling.stop_strings = options.stop_strings;
  if (tokenizer.eos_id()) sampling.eos_token_ids = {*tokenizer.eos_id()};
  sampling.seed = options.seed;
  infer::GenerateOptions gen;
  gen.samples_per_prompt = options.k;
  gen.tokenizer = &tokenizer;
  gen.max_batch = options.generation_batch;
  gen.cuda_graphs = options.cuda_graphs;
  gen.sample_id_base = options.sample_id_base;
  const std::vector<infer::Completion> sampled = infer::generate(model, prompts, sampling, gen);

  PolicyEvalReport r;
  r.problems = static_cast<std::int64_t>(problems.size());
  r.k = options.k;
  std::vector<std::vector<Sample>> votes(problems.size());
  std::vector<double> lengths;
  std::int64_t formatted = 0;
  for (const infer::Completion& c : sampled) {
    const data::Problem& p = problems[static_cast<std::size_t>(c.prompt)];
    const bool correct = grade(p, c.text).outcome == Outcome::correct;
    votes[static_cast<std::size_t>(c.prompt)].push_back({answer_key(p, c.text, correct), correct});
    lengths.push_back(static_cast<double>(c.tokens.size()));
    formatted += well_formed(c.text);
  }
  r.per_problem = per_problem_pass_at_1(votes);
  r.pass_at_1 = bootstrap_mean_interval(r.per_problem, {.seed = options.seed});  // pass_at_1(votes), once
  r.cons_at_k = cons_at_k(votes);
  r.mean_length = bootstrap_mean_interval(lengths, {.seed = options.seed + 1});
  r.format_rate = static_cast<double>(formatted) / static_cast<double>(sampled.size());
  if (options.greedy) {
    sampling.greedy = true;
    gen.samples_per_prompt = 1;
    const std::vector<infer::Completion> greedy = infer::generate(model, prompts, sampling, gen);
    std::vector<bool> correct;
    for (const infer::Completion& c : greedy)
      correct.push_back(grade(problems[static_cast<std::size_t>(c.prompt)], c.text).outcome == Outcome::correct);
    r.greedy = greedy_accuracy(correct);
  }
  return r;
}

}  // namespace kiln::rl
