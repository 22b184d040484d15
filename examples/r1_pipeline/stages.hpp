// The stages this program runs itself (r1_pipeline --stage NAME --resume OUT); the others run
// examples/pretrain and examples/grpo (main.cpp).
//
//   tokenizer         the byte-level BPE tokenizer both bases share, learned on the start of the
//                     pretraining corpus (as examples/pretrain learns its own)
//   cold-start        SFT of the teacher's base on worked solutions before GRPO (R1's cold start;
//                     optional, --cold-start N examples)
//   traces            rejection sampling of the GRPO teacher (distill/traces.hpp): k samples per
//                     training problem, kept when correct, well-formed and not cut off, deduplicated
//   student-sft       sequence-level KD: SFT on the traces (R1-Distill)
//   student-kd        token-level logit KD on the traces, the teacher scoring every completion token
//   student-onpolicy  on-policy distillation: the student samples, the teacher scores (reverse KL at
//                     β = 1; λ of the micro-batches on-policy, the rest from the traces)
//   eval-MODEL        held-out pass@1, cons@k, greedy and length of one model
//
// The three distilled students start from the same student base and train for the same number of
// optimizer steps on micro-batches of the same token budget (train::Trainer, warmup + cosine,
// checkpoints every 20 steps: an interrupted stage resumes from its last one). Each writes
// metrics.jsonl (a record per step and per validation), summary.json (steps, tokens, seconds) and
// its checkpoint.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <kiln/distill/objectives.hpp>
#include <kiln/distill/on_policy.hpp>
#include <kiln/distill/sft.hpp>
#include <kiln/distill/traces.hpp>
#include <kiln/rl/jsonl.hpp>
#include <kiln/rl/policy_evaluation.hpp>
#include <kiln/train/trainer.hpp>

#include "settings.hpp"

namespace r1 {

using Clock = std::chrono::steady_clock;

// The models the report compares, in its order, with the folder their checkpoint is in.
inline std::vector<std::string> evaluated_models(const Settings& s) {
  std::vector<std::string> m{"teacher-base"};
  if (s.cold_start > 0) m.push_back("cold-start");
  for (const char* x : {"teacher", "student-base", "student-grpo", "student-sft", "student-kd", "student-onpolicy"})
    m.push_back(x);
  return m;
}

// ---- distillation data ---------------------------------------------------------------------------

// Traces as SFT examples (the prompt text encoded as at generation), split by problem: about 1 in
// 20 problems is held out for the validation loss.
struct TraceExamples {
  std::vector<distill::SftExample> train, validation;
};

inline TraceExamples trace_examples(const std::string& out, const data::Tokenizer& tok) {
  const std::vector<distill::Trace> traces = distill::read_traces(out + "/traces/traces.jsonl");
  check(!traces.empty(), "r1_pipeline", out, "/traces/traces.jsonl has no traces: the teacher solved none of the ",
        "problems it was given (a weak teacher: pretrain or train it longer)");
  TraceExamples e;
  for (const distill::Trace& t : traces) {
    distill::SftExample x{{tok.bos_id().value()}, tok.encode(t.completion)};
    const auto p = tok.encode(t.prompt);
    x.prompt.insert(x.prompt.end(), p.begin(), p.end());
    if (x.completion.empty()) continue;
    (data::tasks_detail::hash_text(t.problem) % 20 == 0 ? e.validation : e.train).push_back(std::move(x));
  }
  check(!e.train.empty(), "r1_pipeline", "every trace fell into the validation split (", e.validation.size(),
        " traces): sample more problems");
  if (e.validation.empty()) e.validation.push_back(e.train.back());  // a tiny run: validate on a training trace
  return e;
}

// ---- one Trainer run with metrics and a summary ---------------------------------------------------

template <class Model>
void write_trainer_records(rl::JsonlWriter& metrics, const train::Trainer<Model>& trainer, std::size_t& steps_written,
                           std::size_t& evals_written) {
  for (; steps_written < trainer.history().size(); ++steps_written) {
    const train::StepRecord& r = trainer.history()[steps_written];
    io::json j{{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm}, {"tokens", r.tokens},
               {"seconds", r.seconds}};
    for (const auto& [name, v] : r.parts) j[name] = v;
    metrics.write(j);
  }
  for (; evals_written < trainer.eval_history().size(); ++evals_written) {
    const train::EvalRecord& e = trainer.eval_history()[evals_written];
    metrics.write(io::json{{"step", e.step}, {"val_loss", e.loss}});
  }
}

// Trains `model` for `steps` steps with checkpoints in DIR/checkpoint (resuming from it when it
// exists), validation 4 times, metrics in DIR/metrics.jsonl; returns the summary.
template <class Model>
io::ordered_json run_trainer(Model& model, const std::string& dir, const Settings& s, std::int64_t steps, double lr,
                             const train::BatchFn& data, const train::BatchFn& validation, std::int64_t eval_batches,
                             const train::LossFn<Model>& objective) {
  std::filesystem::create_directories(dir);
  train::TrainerOptions o;
  o.steps = steps;
  o.schedule = {.peak_lr = lr, .min_lr = lr / 10, .warmup_steps = std::max<std::int64_t>(1, steps / 10), .total_steps = steps};
  o.adamw.weight_decay = 0.0;
  o.log_every = 10;
  o.eval_every = std::max<std::int64_t>(1, steps / 4);
  o.eval_batches = eval_batches;
  o.checkpoint_every = 20;
  o.checkpoint_dir = dir + "/checkpoint";
  o.data_seed = s.seed;
  train::Trainer<Model> trainer(model, o, data, validation, objective);
  const bool resuming = std::filesystem::exists(o.checkpoint_dir);
  if (resuming) trainer.resume(o.checkpoint_dir);
  rl::JsonlWriter metrics(dir + "/metrics.jsonl", resuming);
  if (!resuming) {
    trainer.evaluate();  // the starting point's validation loss
    trainer.log(str("eval step 0 | val loss ", trainer.eval_history().back().loss, "\n"));
  }
  std::size_t steps_written = 0, evals_written = 0;
  const auto start = Clock::now();
  // In pieces that end at checkpoints, so the metrics on disk never run far ahead of them.
  while (trainer.steps_done() < steps) {
    trainer.run_until(std::min(steps, (trainer.steps_done() / o.checkpoint_every + 1) * o.checkpoint_every));
    write_trainer_records(metrics, trainer, steps_written, evals_written);
  }
  io::ordered_json summary;
  summary["steps"] = steps;
  summary["tokens"] = trainer.tokens_seen();
  summary["seconds_this_run"] = std::chrono::duration<double>(Clock::now() - start).count();
  summary["val_loss"] = trainer.eval_history().empty() ? 0.0 : trainer.eval_history().back().loss;
  summary["lr"] = lr;
  return summary;
}

// ---- the shared tokenizer --------------------------------------------------------------------------

inline data::Tokenizer load_tokenizer(const std::string& out) { return data::Tokenizer::load(out + "/tokenizer/tokenizer.json"); }

// examples/pretrain's tokenizer for its corpus (the bases' corpus: operands of one digit more than
// the problems), learned on the same first documents.
inline void tokenizer_stage(const std::string& out, const Settings& s) {
  const bool big = s.big();
  const auto sample_docs = static_cast<std::size_t>(big ? 4000 : 1500);
  const example::Corpus corpus =
      example::make_corpus(s.seed, sample_docs, 1, example::task_mix(static_cast<int>(s.max_digits + 1), 0.0));
  const data::Tokenizer tok = example::train_tokenizer(corpus, big ? 2048 : 512, sample_docs);
  std::filesystem::create_directories(out + "/tokenizer");
  tok.save(out + "/tokenizer/tokenizer.json");
  std::printf("tokenizer: %lld tokens, learned on %zu documents -> %s/tokenizer/tokenizer.json\n",
              static_cast<long long>(tok.vocab_size()), sample_docs, out.c_str());
}

// ---- cold start --------------------------------------------------------------------------------

template <class T>
void cold_start_stage(const std::string& out, const Settings& s) {
  const data::Tokenizer tok = load_tokenizer(out);
  auto model = load_stage_model<nn::DeepseekV3ForCausalLM<T>>(out + "/teacher-base", s);
  Generator gen{s.seed * 1000003ull + 41, 0};
  std::vector<distill::SftExample> examples;
  for (std::int64_t i = 0; i < s.cold_start + 20; ++i) {
    const data::Problem p = data::sample(task_mix(s), gen, data::Split::train);
    examples.push_back({encode_prompt(tok, p), tok.encode(data::worked_solution(p))});
  }
  const std::vector<distill::SftExample> validation(examples.end() - 20, examples.end());
  examples.resize(static_cast<std::size_t>(s.cold_start));
  distill::SftDataOptions o;
  o.tokens_per_batch = s.distill_tokens;
  o.packing = s.packed();
  o.seed = s.seed;
  o.pad_id = tok.eos_id().value();
  const distill::SftData data(examples, o);
  o.shuffle = false;
  const distill::SftData val(validation, o);
  const std::int64_t steps = std::max<std::int64_t>(1, 2 * data.batches());  // two epochs
  std::printf("cold start: SFT of the teacher's base on %zu worked solutions, %lld steps\n", examples.size(),
              static_cast<long long>(steps));
  io::ordered_json summary = run_trainer(*model, out + "/cold-start", s, steps, s.distill_lr, data.batch_fn(),
                                         val.batch_fn(), val.batches(), {});
  std::filesystem::copy_file(out + "/tokenizer/tokenizer.json", out + "/cold-start/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  write_json_file(out + "/cold-start/summary.json", summary);
}

// ---- rejection sampling -------------------------------------------------------------------------

template <class T>
void traces_stage(const std::string& out, const Settings& s) {
  const data::Tokenizer tok = load_tokenizer(out);
  auto teacher = load_stage_model<nn::DeepseekV3ForCausalLM<T>>(out + "/teacher", s);
  Generator gen{s.seed * 1000003ull + 23, 0};
  std::vector<data::Problem> problems;
  for (std::int64_t i = 0; i < s.traces_problems; ++i) problems.push_back(data::sample(task_mix(s), gen, data::Split::train));
  infer::SamplingParams sampling;
  sampling.temperature = s.traces_temperature;
  sampling.top_p = 0.95;
  sampling.max_new_tokens = s.max_completion;
  sampling.stop_strings = {"</answer>"};
  sampling.eos_token_ids = {tok.eos_id().value()};
  sampling.seed = s.seed + 99;
  distill::RejectionOptions o;
  o.samples_per_prompt = s.traces_samples;
  o.max_completion_tokens = s.max_completion;
  distill::RejectionStats stats;
  const auto start = Clock::now();
  const std::vector<distill::Trace> traces = distill::rejection_sample(
      *teacher, tok, problems, [&](const data::Problem& p) { return encode_prompt(tok, p); }, sampling, o,
      "teacher (" + s.config + ", GRPO)", &stats, [&](std::int64_t done, std::int64_t total) {
        std::printf("rejection sampling: %lld/%lld problems, %.1f s\n", static_cast<long long>(done),
                    static_cast<long long>(total), std::chrono::duration<double>(Clock::now() - start).count());
        std::fflush(stdout);
      });
  std::filesystem::create_directories(out + "/traces");
  distill::write_traces(out + "/traces/traces.jsonl", traces);
  io::ordered_json j;
  j["problems"] = s.traces_problems;
  j["samples_per_problem"] = s.traces_samples;
  j["temperature"] = s.traces_temperature;
  j["candidates"] = stats.candidates;
  j["kept"] = stats.kept;
  j["rejected_length"] = stats.rejected_length;
  j["rejected_format"] = stats.rejected_format;
  j["rejected_wrong"] = stats.rejected_wrong;
  j["rejected_duplicate"] = stats.rejected_duplicate;
  j["problems_with_a_trace"] = stats.prompts_with_any_kept;
  j["seconds"] = std::chrono::duration<double>(Clock::now() - start).count();
  write_json_file(out + "/traces/summary.json", j);
  std::printf("traces: kept %lld of %lld samples (%lld of %lld problems have one); rejected: %lld cut off, %lld "
              "malformed, %lld wrong, %lld duplicates -> %s/traces/traces.jsonl\n",
              static_cast<long long>(stats.kept), static_cast<long long>(stats.candidates),
              static_cast<long long>(stats.prompts_with_any_kept), static_cast<long long>(s.traces_problems),
              static_cast<long long>(stats.rejected_length), static_cast<long long>(stats.rejected_format),
              static_cast<long long>(stats.rejected_wrong), static_cast<long long>(stats.rejected_duplicate), out.c_str());
}

// ---- the distilled students ----------------------------------------------------------------------

// kind: sft, kd or onpolicy (stage student-KIND), from the student's base (Model: DeepSeek-V3-style
// or Llama); the teacher is DeepSeek-V3-style, and the objectives compare the two models' logits
// over the shared tokenizer's vocabulary, whatever their architectures.
template <class T, class Model>
void train_student(const std::string& out, const Settings& s, const std::string& kind, Model& student) {
  using Teacher = nn::DeepseekV3ForCausalLM<T>;
  const data::Tokenizer tok = load_tokenizer(out);
  const TraceExamples examples = trace_examples(out, tok);
  distill::SftDataOptions o;
  o.tokens_per_batch = s.distill_tokens;
  o.packing = s.packed();
  o.seed = s.seed;
  o.pad_id = tok.eos_id().value();
  o.max_length = student.max_positions();
  const distill::SftData data(examples.train, o);
  o.shuffle = false;
  const distill::SftData validation(examples.validation, o);
  std::printf("student-%s: %zu training traces (%lld completion tokens, %lld micro-batches of <= %lld tokens per "
              "epoch), %zu validation traces\n",
              kind.c_str(), examples.train.size(), static_cast<long long>(data.completion_tokens()),
              static_cast<long long>(data.batches()), static_cast<long long>(s.distill_tokens), examples.validation.size());
  std::unique_ptr<Teacher> teacher;
  train::LossFn<Model> objective;
  train::BatchFn batches = data.batch_fn();
  distill::OnPolicyStats on_policy;
  io::ordered_json settings;
  if (kind == "kd" || kind == "onpolicy") {
    teacher = load_stage_model<Teacher>(out + "/teacher", s);
    distill::DistillLossOptions loss;
    if (kind == "kd") {
      loss = {distill::Divergence::logit_kd, s.kd_temperature, 0.0};
      settings["objective"] = str("logit KD, forward KL at temperature ", s.kd_temperature, " (x T^2)");
    } else {
      loss = {distill::Divergence::generalized_jsd, 1.0, s.onpolicy_beta};
      settings["objective"] = str("on-policy generalized JSD, beta ", s.onpolicy_beta, ", lambda ", s.onpolicy_lambda);
      distill::OnPolicyOptions p;
      p.lambda = s.onpolicy_lambda;
      p.prompts_per_batch = s.onpolicy_prompts;
      p.sampling.max_new_tokens = s.max_completion;
      p.sampling.stop_strings = {"</answer>"};
      p.seed = s.seed + 5;
      p.packing = s.packed();
      const data::TaskMix mix = task_mix(s);
      const std::uint64_t problem_seed = s.seed * 1000003ull + 59;
      batches = distill::on_policy_batches(
          student, tok,
          [mix, problem_seed](std::int64_t k) {
            Generator g{problem_seed, static_cast<std::uint64_t>(k) << 24};  // 2^24 draws apart: a pure function of k
            return data::sample(mix, g, data::Split::train);
          },
          [&tok](const data::Problem& p) { return encode_prompt(tok, p); }, &data, p, &on_policy);
    }
    objective = distill::distillation_objective<Model>(*teacher, loss);
  } else {
    settings["objective"] = "SFT on the teacher's traces (next-token CE on completion tokens)";
  }
  io::ordered_json summary = run_trainer(student, out + "/student-" + kind, s, s.distill_steps, s.distill_lr, batches,
                                         validation.batch_fn(), validation.batches(), objective);
  summary["objective"] = settings["objective"];
  summary["traces"] = examples.train.size();
  if (kind == "onpolicy") {
    summary["on_policy_batches"] = on_policy.batches;
    summary["on_policy_samples"] = on_policy.samples;
    summary["on_policy_tokens"] = on_policy.tokens;
  }
  write_json_file(out + "/student-" + kind + "/summary.json", summary);
}

template <class T>
void student_stage(const std::string& out, const Settings& s, const std::string& kind) {
  with_stage_model<T>(out + "/student-base", s, [&](auto& student) { train_student<T>(out, s, kind, student); });
}

// ---- evaluation ---------------------------------------------------------------------------------

// One model's held-out pass@1, cons@k, greedy and length -> OUT/eval/MODEL.json.
template <class Model>
void evaluate(const std::string& out, const Settings& s, const std::string& model_name, const data::Tokenizer& tok,
              const Model& model) {
  rl::PolicyEvalOptions o;
  o.k = s.eval_k;
  o.max_new_tokens = s.max_completion;
  o.seed = s.seed + 13;
  o.encode_prompt = [&tok](const data::Problem& p) { return encode_prompt(tok, p); };
  const auto start = Clock::now();
  const rl::PolicyEvalReport r = rl::evaluate_policy(model, tok, held_out(s), o);
  io::ordered_json j{{"model", model_name}, {"parameters", model.num_parameters()}};
  j.update(rl::to_json(r));
  j["seconds"] = std::chrono::duration<double>(Clock::now() - start).count();
  std::filesystem::create_directories(out + "/eval");
  write_json_file(out + "/eval/" + model_name + ".json", j);
  std::printf("%s: pass@1 %.3f [%.3f, %.3f] | cons@%lld %.3f [%.3f, %.3f] | greedy %.3f | length %.1f | format %.2f\n",
              model_name.c_str(), r.pass_at_1.estimate, r.pass_at_1.lo, r.pass_at_1.hi, static_cast<long long>(r.k),
              r.cons_at_k.estimate, r.cons_at_k.lo, r.cons_at_k.hi, r.greedy.estimate, r.mean_length.estimate,
              r.format_rate);
}

template <class T>
void eval_stage(const std::string& out, const Settings& s, const std::string& model_name) {
  const data::Tokenizer tok = load_tokenizer(out);
  with_stage_model<T>(out + "/" + model_name, s, [&](auto& model) { evaluate(out, s, model_name, tok, model); });
}

}  // namespace r1
