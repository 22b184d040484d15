// On-policy distillation batches (GKD, Agarwal et al. 2024; issue 12): the student samples
// completions of training prompts with its current weights, and the teacher scores every token
// the student wrote (distill/objectives.hpp, generalized JSD at β; β = 1: reverse KL). With
// probability λ (GKD's on-policy fraction) a micro-batch is sampled this way, otherwise it is the
// next micro-batch of a fixed dataset (the teacher's traces: supervised KD on them).
//
// As a train::BatchFn: micro-batch i is on-policy when philox(seed, i) < λ; its prompts are
// problems number i·P .. i·P + P - 1 of the problem stream (a pure function of the index), its
// completions sampled with draws keyed by (seed, i), so a run resumed from a checkpoint (same
// weights) samples what the uninterrupted run sampled. The batch holds the prompt + completion
// sequences, packed in one row or padded (distill/sft.hpp's layouts), whose targets are the
// completion tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "kiln/core/random.hpp"
#include "kiln/data/tasks.hpp"
#include "kiln/data/tokenizer.hpp"
#include "kiln/distill/sft.hpp"
#include "kiln/infer/engine.hpp"

namespace kiln::distill {

struct OnPolicyOptions {
  double lambda = 1.0;                  // fraction of micro-batches sampled from the student
  std::int64_t prompts_per_batch = 16;  // prompts of an on-policy micro-batch
  std::int64_t samples_per_prompt = 1;  // completions per prompt
  infer::SamplingParams sampling;       // the student's sampling (temperature 1: its own distribution)
  std::uint64_t seed = 0;
  bool packing = true;                  // one packed row (else padded rows: SftDataOptions::packing)
};

// What the last on-policy micro-batches looked like (for progress lines).
struct OnPolicyStats {
  std::int64_t batches = 0, samples = 0, tokens = 0;
};

// `student` and `tokenizer` must outlive the function; `offline` may be null when λ = 1. problem(k)
// returns training problem number k; encode(p) its prompt ids.
template <class Student>
train::BatchFn on_policy_batches(const Student& student, const data::Tokenizer& tokenizer,
                                 std::function<data::Problem(std::int64_t)> problem,
                                 std::function<std::vector<std::int64_t>(const data::Problem&)> encode,
                                 const SftData* offline, OnPolicyOptions options, OnPolicyStats* stats = nullptr) {
  const char* op = "on_policy_batches";
  check(options.lambda >= 0.0 && options.lambda <= 1.0, op, "lambda must lie in [0, 1], got ", options.lambda);
  check(options.lambda == 1.0 || offline != nullptr, op, "lambda = ", options.lambda,
        " < 1 needs an offline dataset for the other micro-batches");
  check(options.prompts_per_batch > 0 && options.samples_per_prompt > 0, op,
        "prompts_per_batch and samples_per_prompt must be positive, got ", options.prompts_per_batch, " and ",
        options.samples_per_prompt);
  check(static_cast<bool>(problem) && static_cast<bool>(encode), op, "needs a problem source and a prompt encoder");
  if (options.sampling.eos_token_ids.empty() && tokenizer.eos_id()) options.sampling.eos_token_ids = {*tokenizer.eos_id()};
  return [&student, &tokenizer, problem = std::move(problem), encode = std::move(encode), offline, options,
          stats](std::int64_t i) -> train::Batch {
    if (uniform_at(options.seed, static_cast<std::uint64_t>(i)) >= options.lambda) return offline->batch(i);
    std::vector<std::vector<std::int64_t>> prompts;
    for (std::int64_t k = 0; k < options.prompts_per_batch; ++k) prompts.push_back(encode(problem(i * options.prompts_per_batch + k)));
    infer::GenerateOptions gen;
    gen.samples_per_prompt = options.samples_per_prompt;
    gen.tokenizer = &tokenizer;
    gen.sample_id_base = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(options.prompts_per_batch *
                                                                                     options.samples_per_prompt);
    infer::SamplingParams sampling = options.sampling;
    sampling.seed = options.seed ^ 0x6F6E2D706F6C6963ull;  // "on-polic": draws apart from other users of the seed
    const std::vector<infer::Completion> completions = infer::generate(student, prompts, sampling, gen);
    std::vector<SftExample> examples;
    for (const infer::Completion& c : completions)
      if (!c.tokens.empty()) examples.push_back({prompts[static_cast<std::size_t>(c.prompt)], c.tokens});
    if (stats) {
      ++stats->batches;
      stats->samples += static_cast<std::int64_t>(completions.size());
      for (const SftExample& e : examples) stats->tokens += static_cast<std::int64_t>(e.completion.size());
    }
    check(!examples.empty(), "on_policy_batches", "every sample of micro-batch ", i, " is empty");
    // One micro-batch of everything sampled (the budget is the samples themselves).
    SftDataOptions layout;
    layout.packing = options.packing;
    layout.pad_id = tokenizer.eos_id().value_or(0);
    layout.shuffle = false;
    layout.tokens_per_batch = std::numeric_limits<std::int64_t>::max() / 2;
    return SftData(std::move(examples), layout).batch(0);
  };
}

}  // namespace kiln::distill
