// Rejection sampling of reasoning traces for distillation (issue 12; R1 §2.3.3 and R1-Distill):
// a teacher samples several completions per problem, the rule-based verifier keeps the correct
// and well-formed ones, and the survivors become an SFT dataset (sequence-level KD), stored as
// JSON Lines.
//
// A Trace is one kept example: the prompt text (what the model was prompted with, bos left out),
// the completion (the model's text after the prompt), its reward, the model that wrote it, the
// sampling seed, and the problem's canonical text (data::canonical, e.g. "arithmetic 12 + 345":
// an id for deduplication and reports).
//
// The filter (select_traces) is a pure function of Candidates (a completion with its problem
// index, token count, whether generation cut it off, and its grade), so it is tested on crafted
// texts without a model. Each candidate is rejected for the FIRST check it fails, in this order,
// or kept:
//   length     truncated (generation hit max_new_tokens: the completion has no ending) or longer
//              than max_completion_tokens generated tokens (when that is > 0);
//   format     require_format and not rl::well_formed (exactly one think block, then one answer
//              block, nothing else);
//   wrong      require_correct and the last answer block is not correct (rl::grade);
//   duplicate  deduplicate and the same (problem index, completion text) was already kept;
//   cap        max_per_prompt > 0 and that many were already kept for this problem.
// So every candidate lands in exactly one bucket:
//   candidates = rejected_length + rejected_format + rejected_wrong + rejected_duplicate
//                + rejected_cap + kept,
// and the kept ones are returned in candidate order (the first copy of a duplicate, the first
// max_per_prompt of a problem). Format comes before correctness so that "wrong" means what
// rl::Outcome::wrong means: a well-formed completion with a wrong answer.
//
// rejection_sample drives a model: problems go through the generation engine in waves of
// prompts_per_wave (memory is bounded by one wave's samples; progress is reported after each),
// samples_per_prompt samples each. Sample ids are sample_id_base + problem·G + sample, counted
// over the whole problem list, so the draws (keyed by seed, sample id and position) and hence the
// traces do not depend on the wave size. With max_completion_tokens > 0 the engine generates at
// most that many tokens: the engine checks eos and stop strings before the length limit, so a
// completion that ends within the limit ends exactly as it would with a larger budget, and one
// that does not is rejected for length either way; generating further would be wasted.
//
// JSON Lines. One object per line with the keys
//   {"completion":"<think>...</think><answer>7</answer>","problem":"arithmetic 3 + 4",
//    "prompt":"Reason in ...\nArithmetic: compute 3 + 4.\n","reward":1.0,"seed":7,"source":"teacher"}
// (keys sorted). Written atomically (io::write_file_atomically: a reader sees the old file or the
// complete new one). Byte-level BPE can cut a UTF-8 character, so model text need not be valid
// UTF-8; such bytes are written as U+FFFD (the round trip is exact for valid UTF-8 only) rather
// than losing the dataset. Reading skips blank lines, ignores keys it does not know, and reports
// any other defect (invalid JSON, not an object, a missing key, a value of the wrong type, a seed
// that is not a non-negative integer) as a kiln::Error naming the file and the 1-based line
// number. JSON has no non-finite numbers (NaN is not JSON, and nlohmann refuses a literal such as
// 1e999 that overflows a double), so a reward read is always finite; writing refuses non-finite
// rewards rather than let them become null.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/data/tasks.hpp"
#include "kiln/data/tokenizer.hpp"
#include "kiln/infer/completion.hpp"
#include "kiln/infer/engine.hpp"
#include "kiln/infer/sampling_params.hpp"
#include "kiln/io/file.hpp"
#include "kiln/io/json.hpp"
#include "kiln/rl/rewards.hpp"

namespace kiln::distill {

// One distillation example.
struct Trace {
  std::string prompt;      // the prompt's text (its token ids decoded, a leading bos left out)
  std::string completion;  // the model's text after the prompt (eos excluded)
  double reward = 0.0;     // rl::grade's score (RewardScores defaults: 1 correct, 0.1 wrong, 0 malformed)
  std::string source;      // the model that wrote it
  std::uint64_t seed = 0;  // the sampling seed (SamplingParams::seed)
  std::string problem;     // data::canonical of the problem: a short id for dedup and reports
};

// ---- JSON Lines -----------------------------------------------------------------------------------

// Writes the traces to `path`, one JSON object per line, atomically. kiln::Error for a non-finite
// reward (JSON has no spelling for it) or a failed write; invalid UTF-8 is written as U+FFFD.
inline void write_traces(const std::string& path, const std::vector<Trace>& traces) {
  const char* op = "distill::write_traces";
  std::string text;
  for (std::size_t i = 0; i < traces.size(); ++i) {
    const Trace& t = traces[i];
    check(std::isfinite(t.reward), op, path, ": trace ", i, " has reward ", t.reward, "; rewards must be finite");
    io::json j = io::json::object();
    j["prompt"] = t.prompt;
    j["completion"] = t.completion;
    j["reward"] = t.reward;
    j["source"] = t.source;
    j["seed"] = t.seed;
    j["problem"] = t.problem;
    // Never throws on invalid UTF-8 (the replace handler); the escapes keep a record on one line.
    text += j.dump(-1, ' ', false, io::json::error_handler_t::replace);
    text += '\n';
  }
  io::write_file_atomically(path, text, op);
}

namespace traces_detail {

// The value of `key` in a record, or kiln::Error naming the file and line.
inline const io::json& field(const io::json& record, const char* key, const std::string& where) {
  const auto it = record.find(key);
  check(it != record.end(), "distill::read_traces", where, ": missing key \"", key, "\"");
  return *it;
}

inline std::string string_field(const io::json& record, const char* key, const std::string& where) {
  const io::json& v = field(record, key, where);
  check(v.is_string(), "distill::read_traces", where, ": \"", key, "\" must be a string, got ", io::describe_json(v));
  return v.get<std::string>();
}

inline bool blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

}  // namespace traces_detail

// Reads a file written by write_traces (see the header comment for what it accepts). An empty
// file, or one of blank lines only, gives no traces.
inline std::vector<Trace> read_traces(const std::string& path) {
  const char* op = "distill::read_traces";
  const std::string text = io::read_text_file(path, op);
  std::vector<Trace> traces;
  std::size_t line_number = 0;
  for (std::size_t start = 0; start < text.size();) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    const std::string_view line = std::string_view(text).substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (traces_detail::blank(line)) continue;
    const std::string where = str(path, " line ", line_number);
    const io::json record = io::parse_json(line, op, where);
    check(record.is_object(), op, where, ": a trace must be a JSON object, got ", io::describe_json(record));
    Trace t;
    t.prompt = traces_detail::string_field(record, "prompt", where);
    t.completion = traces_detail::string_field(record, "completion", where);
    t.source = traces_detail::string_field(record, "source", where);
    t.problem = traces_detail::string_field(record, "problem", where);
    const io::json& reward = traces_detail::field(record, "reward", where);
    check(reward.is_number(), op, where, ": \"reward\" must be a number, got ", io::describe_json(reward));
    t.reward = reward.get<double>();
    // Unreachable through parse_json (it refuses 1e999 as an overflow); kept as a guard.
    check(std::isfinite(t.reward), op, where, ": \"reward\" must be finite, got ", t.reward);
    const io::json& seed = traces_detail::field(record, "seed", where);
    // nlohmann reads every non-negative integer literal that fits 64 bits as unsigned.
    check(seed.is_number_unsigned(), op, where, ": \"seed\" must be a non-negative integer below 2^64, got ",
          io::describe_json(seed));
    t.seed = seed.get<std::uint64_t>();
    traces.push_back(std::move(t));
  }
  return traces;
}

// ---- the filter ---------------------------------------------------------------------------------

struct RejectionOptions {
  std::int64_t samples_per_prompt = 8;     // G: completions drawn per problem
  std::int64_t max_completion_tokens = 0;  // keep completions of at most this many generated tokens (0: no limit)
  bool require_correct = true;             // keep only correct answers (rl::grade)
  bool require_format = true;              // keep only well-formed completions (rl::well_formed)
  bool deduplicate = true;                 // keep one copy of each (problem, completion text)
  std::int64_t max_per_prompt = 0;         // keep at most this many per problem (0: all accepted)
  std::int64_t prompts_per_wave = 64;      // problems generated at once (bounds memory; progress per wave)
  std::int64_t max_batch = 0;              // the engine's max_batch: samples decoded at once (0: a whole wave)
  std::uint64_t sample_id_base = 0;        // sample ids are base + problem·G + sample

  // kiln::Error naming `op` unless the options are usable.
  void check(const char* op) const {
    kiln::check(samples_per_prompt >= 1, op, "samples_per_prompt must be >= 1, got ", samples_per_prompt);
    kiln::check(max_completion_tokens >= 0, op, "max_completion_tokens must be >= 0 (0: no limit), got ",
                max_completion_tokens);
    kiln::check(max_per_prompt >= 0, op, "max_per_prompt must be >= 0 (0: no cap), got ", max_per_prompt);
    kiln::check(prompts_per_wave >= 1, op, "prompts_per_wave must be >= 1, got ", prompts_per_wave);
    kiln::check(max_batch >= 0, op, "max_batch must be >= 0 (0: a whole wave at once), got ", max_batch);
  }
};

// How many candidates each filter rejected (each candidate is counted once: see the header comment).
struct RejectionStats {
  std::int64_t candidates = 0;
  std::int64_t rejected_length = 0;     // truncated, or over max_completion_tokens
  std::int64_t rejected_format = 0;     // not well-formed
  std::int64_t rejected_wrong = 0;      // well-formed (or format not required) but not correct
  std::int64_t rejected_duplicate = 0;  // a repeat of a kept (problem, completion)
  std::int64_t rejected_cap = 0;        // over max_per_prompt
  std::int64_t kept = 0;
  std::int64_t prompts_with_any_kept = 0;  // problems with at least one kept completion

  // Adds another batch's counts (batches of disjoint problems: prompts_with_any_kept adds up).
  RejectionStats& operator+=(const RejectionStats& o) {
    candidates += o.candidates;
    rejected_length += o.rejected_length;
    rejected_format += o.rejected_format;
    rejected_wrong += o.rejected_wrong;
    rejected_duplicate += o.rejected_duplicate;
    rejected_cap += o.rejected_cap;
    kept += o.kept;
    prompts_with_any_kept += o.prompts_with_any_kept;
    return *this;
  }
};

// One generated completion, graded.
struct Candidate {
  std::size_t problem = 0;    // index of its problem (dedup and the cap are per index)
  std::string completion;     // its text
  std::int64_t tokens = 0;    // generated tokens (an ending eos included)
  bool truncated = false;     // generation stopped at max_new_tokens (FinishReason::length)
  bool correct = false;       // rl::grade(problem, completion).outcome == correct
  bool well_formed = false;   // rl::well_formed(completion)
  double reward = 0.0;        // rl::grade's score, for the Trace
};

// A candidate graded against its problem with rl::grade and rl::well_formed.
inline Candidate grade_candidate(const data::Problem& p, std::size_t problem, std::string completion, std::int64_t tokens,
                                 bool truncated) {
  Candidate c;
  c.problem = problem;
  c.tokens = tokens;
  c.truncated = truncated;
  const rl::Grade g = rl::grade(p, completion);
  c.correct = g.outcome == rl::Outcome::correct;
  c.well_formed = rl::well_formed(completion);
  c.reward = g.score;
  c.completion = std::move(completion);
  return c;
}

// The indices of the kept candidates, in order; `stats` (may be null) receives the counts of this
// call (it is overwritten, not added to).
inline std::vector<std::size_t> select_traces(const std::vector<Candidate>& candidates, const RejectionOptions& options,
                                              RejectionStats* stats = nullptr) {
  options.check("distill::select_traces");
  RejectionStats s;
  s.candidates = static_cast<std::int64_t>(candidates.size());
  std::vector<std::size_t> kept;
  std::set<std::pair<std::size_t, std::string_view>> seen;  // views into `candidates`
  std::map<std::size_t, std::int64_t> kept_of;              // kept count per problem
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    if (c.truncated || (options.max_completion_tokens > 0 && c.tokens > options.max_completion_tokens)) {
      ++s.rejected_length;
    } else if (options.require_format && !c.well_formed) {
      ++s.rejected_format;
    } else if (options.require_correct && !c.correct) {
      ++s.rejected_wrong;
    } else if (options.deduplicate && seen.count({c.problem, c.completion})) {
      ++s.rejected_duplicate;
    } else if (options.max_per_prompt > 0 && kept_of[c.problem] >= options.max_per_prompt) {
      ++s.rejected_cap;
    } else {
      if (options.deduplicate) seen.insert({c.problem, c.completion});
      ++kept_of[c.problem];
      kept.push_back(i);
    }
  }
  s.kept = static_cast<std::int64_t>(kept.size());
  for (const auto& [problem, n] : kept_of) s.prompts_with_any_kept += n > 0 ? 1 : 0;
  if (stats) *stats = s;
  return kept;
}

// ---- sampling from a model ----------------------------------------------------------------------

// Samples options.samples_per_prompt completions of every problem from `model` (prompts from
// encode_prompt, e.g. rl::encode_r1_zero_prompt), grades them, filters them (select_traces) and
// returns the kept ones as Traces, in problem order, from `source` with seed sampling.seed.
// `stats` (may be null) receives the counts over all problems; on_progress(done, total) is called
// after each wave with the number of problems done. Model: as infer::generate.
template <class Model>
std::vector<Trace> rejection_sample(const Model& model, const data::Tokenizer& tok,
                                    const std::vector<data::Problem>& problems,
                                    const std::function<std::vector<std::int64_t>(const data::Problem&)>& encode_prompt,
                                    const infer::SamplingParams& sampling, const RejectionOptions& options,
                                    const std::string& source, RejectionStats* stats = nullptr,
                                    std::function<void(std::int64_t done, std::int64_t total)> on_progress = {}) {
  const char* op = "distill::rejection_sample";
  options.check(op);
  check(static_cast<bool>(encode_prompt), op, "encode_prompt is empty");
  const std::int64_t G = options.samples_per_prompt;
  infer::SamplingParams params = sampling;
  if (options.max_completion_tokens > 0)
    params.max_new_tokens = std::min(params.max_new_tokens, options.max_completion_tokens);  // see the header comment
  infer::GenerateOptions gen;
  gen.samples_per_prompt = G;
  gen.tokenizer = &tok;
  gen.max_batch = options.max_batch;

  RejectionStats total_stats;
  std::vector<Trace> traces;
  const auto n = static_cast<std::int64_t>(problems.size());
  for (std::int64_t first = 0; first < n; first += options.prompts_per_wave) {
    const std::int64_t last = std::min(n, first + options.prompts_per_wave);
    std::vector<std::vector<std::int64_t>> prompts;
    for (std::int64_t p = first; p < last; ++p) {
      const data::Problem& problem = problems[static_cast<std::size_t>(p)];
      prompts.push_back(encode_prompt(problem));
      check(!prompts.back().empty(), op, "encode_prompt gave no tokens for problem ", p, " (", data::canonical(problem),
            ")");
    }
    gen.sample_id_base = options.sample_id_base + static_cast<std::uint64_t>(first * G);
    std::vector<infer::Completion> completions = infer::generate(model, prompts, params, gen);

    std::vector<Candidate> candidates;
    candidates.reserve(completions.size());
    for (infer::Completion& c : completions) {
      const auto problem = static_cast<std::size_t>(first + c.prompt);
      candidates.push_back(grade_candidate(problems[problem], problem, std::move(c.text),
                                           static_cast<std::int64_t>(c.tokens.size()),
                                           c.finish == infer::FinishReason::length));
    }
    RejectionStats wave_stats;
    const std::vector<std::size_t> kept = select_traces(candidates, options, &wave_stats);
    total_stats += wave_stats;  // waves hold disjoint problem indices

    // Each problem's prompt text, decoded once (bos is not part of the text the model continued).
    std::map<std::size_t, std::string> prompt_text;
    for (const std::size_t i : kept) {
      Candidate& c = candidates[i];
      auto it = prompt_text.find(c.problem);
      if (it == prompt_text.end()) {
        std::span<const std::int64_t> ids = prompts[c.problem - static_cast<std::size_t>(first)];
        if (!ids.empty() && tok.bos_id() && ids.front() == *tok.bos_id()) ids = ids.subspan(1);
        it = prompt_text.emplace(c.problem, tok.decode(ids)).first;
      }
      traces.push_back({it->second, std::move(c.completion), c.reward, source, sampling.seed,
                        data::canonical(problems[c.problem])});
    }
    if (on_progress) on_progress(last, n);
  }
  if (stats) *stats = total_stats;
  return traces;
}

}  // namespace kiln::distill
