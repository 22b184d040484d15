// kiln's side of the generation and GRPO targets (docs: DESIGN "Capabilities and targets"), on the
// work its peers run (benchmarks/peers/: hf_train_generate.py for Hugging Face generate(),
// trl_grpo.py for TRL's GRPOTrainer); scripts/bench_grpo.sh runs all three in one call and prints
// the ratios. The model: kiln's "big" config (examples/pretrain/task_data.hpp big_config) with a
// vocabulary of 2048, random init (seed 1), bf16, on cuda:0 — the peers' DeepseekV3 config.
//
// (a) Generation throughput: infer::generate of 128 prompts of 64 random tokens (uniform over the
//     vocabulary), 256 new tokens each at temperature 1.0, no eos and no stop strings (every sample
//     runs to 256 tokens, as the peer's min_new_tokens = 256 makes HF's), one warm-up generate of
//     8 new tokens first. Per run: seconds (wall clock, the host waiting for the GPU at the end),
//     tokens/s = 128·256 / seconds, the prefill (prompt forward and first draw, until the first
//     progress report) and decode steps/s over the 255 decode steps after it. Median of
//     --gen-runs runs (default 3; the peer times one), with the engine's default (each decode step
//     replayed as a CUDA graph), then as many eager runs (gen_eager_*: every kernel launched from
//     the host) to show what the graphs save.
// (b) One GRPO step of rl::GrpoTrainer: 16 prompts × 8 samples, at most 256 new tokens (temperature
//     1.0, top-p 1, the tokenizer's eos ends a sample, no stop strings: as TRL's generate), loss
//     dapo (TRL's default), beta 0 (no reference model: like the peer), μ = 1, AdamW at 1e-5,
//     micro-batches of --micro-batch sequences (default 64). Prompts: Countdown problems (data::sample
//     with a TaskMix of Countdown only: 3 numbers up to 99, targets 10..200, as the peer's) as
//     "<bos>Countdown: use a b c to make t.\n<think>". Reward: 1 when the completion contains
//     "</answer>", else 0 (the peer's rule reward). Tokenizer: kiln's byte-level BPE with 2048
//     tokens learned on the pretrain corpus (examples/pretrain: 4000 worked solutions). One
//     warm-up step, then --steps timed steps (default 3); each step's wall time ends with a device
//     synchronisation (so work the trainer left queued is counted), next to the trainer's own
//     StepReport breakdown (generation, scoring, log-probs, backward, optimizer; host clocks).
//     Medians over the timed steps.
// The last line printed is one JSON object (also written to --json PATH when given):
//   gen_tok_s, gen_steps_s, gen_s, gen_prefill_s, grpo_step_s, grpo_gen_s, grpo_scoring_s,
//   grpo_logprobs_s, grpo_backward_s, grpo_optimizer_s, grpo_gen_tokens, grpo_gen_tok_s, ...
//
// (c) --profile-decode N (instead of (a) and (b)): one generate of N + 1 new tokens with the
//     profiler on (cudaProfilerStart/Stop) over its N decode steps only, the prefill before them
//     and the warm-up left out: run under `ncu --profile-from-start off` (every kernel of N decode
//     steps, eager) or `nsys profile --capture-range=cudaProfilerApi` (with --profile-graphs: the
//     steps replayed as CUDA graphs, `--cuda-graph-trace=node` to see their kernels). With
//     --profile-speculative the steps are MTP speculative steps (GenerateOptions::speculative: the
//     main model over two tokens, the draws, the MTP module over two, the drafts' draws).
//
//   ./benchmarks/bench_grpo_cuda [--gen-runs N] [--steps N] [--micro-batch N] [--json PATH]
//   ./benchmarks/bench_grpo_cuda --profile-decode N [--profile-graphs] [--profile-speculative]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <cuda_profiler_api.h>
#include <nlohmann/json.hpp>

#include <kiln/infer/engine.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/rl/grpo_trainer.hpp>

#include "../examples/pretrain/task_data.hpp"
#include "cuda_bench.hpp"

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;
using Model = nn::DeepseekV3ForCausalLM<bf16>;

const char* kUsage = R"(bench_grpo_cuda: kiln generation throughput and GRPO step time on the big config (see the file comment)

  --gen-runs N      timed generate runs, median reported (0: skip generation)      [3]
  --steps N         timed GRPO steps after one warm-up step (0: skip GRPO)        [3]
  --micro-batch N   sequences per training forward/backward                       [64]
  --seed N          model init, prompts and sampling                               [1]
  --json PATH       also write the final JSON line to PATH
  --profile-decode N  only profile N decode steps of a B = 128 generate (see the file comment)  [0]
  --profile-graphs  with --profile-decode: the steps replayed as CUDA graphs (default eager)
  --profile-speculative  with --profile-decode: MTP speculative steps (default plain decoding)
)";

constexpr std::int64_t kVocab = 2048;
constexpr std::int64_t kGenPrompts = 128, kGenPromptLength = 64, kGenNewTokens = 256;
constexpr std::int64_t kGrpoPrompts = 16, kGrpoGroup = 8, kGrpoMaxNew = 256;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Named samples, one value per timed run, in the order first added; medians() holds the median of
// each under the same name.
class Samples {
 public:
  void add(const std::string& name, double value) {
    for (auto& [n, v] : samples_)
      if (n == name) {
        v.push_back(value);
        return;
      }
    samples_.push_back({name, {value}});
  }
  nlohmann::ordered_json medians() const {
    nlohmann::ordered_json j;
    for (const auto& [n, v] : samples_) j[n] = bench::median(v);
    return j;
  }
  const std::vector<double>& values(const std::string& name) const {
    for (const auto& [n, v] : samples_)
      if (n == name) return v;
    fail("bench_grpo_cuda", "no sample named ", name);
  }

 private:
  std::vector<std::pair<std::string, std::vector<double>>> samples_;
};

// ---- (a) generation ----------------------------------------------------------------------------

struct GenRun {
  double seconds = 0, prefill = 0, decode = 0;
  std::int64_t tokens = 0, decode_steps = 0;
  double tok_s() const { return static_cast<double>(tokens) / seconds; }
  double steps_s() const { return decode > 0 ? static_cast<double>(decode_steps) / decode : 0; }
};

GenRun generate_once(const Model& model, const std::vector<std::vector<std::int64_t>>& prompts,
                     const infer::SamplingParams& params, bool graphs) {
  GenRun r;
  Clock::time_point first;
  infer::GenerateOptions options;
  options.cuda_graphs = graphs;
  options.on_progress = [&](const infer::GenerationProgress& p) {
    if (p.step == 0) first = Clock::now();  // after the prefill's draw (its tokens read back)
    r.decode_steps = p.step;
  };
  cuda::synchronize();
  const auto t0 = Clock::now();
  const std::vector<infer::Completion> out = infer::generate(model, prompts, params, options);
  cuda::synchronize();
  const auto t1 = Clock::now();
  for (const infer::Completion& c : out) r.tokens += static_cast<std::int64_t>(c.tokens.size());
  r.seconds = seconds(t0, t1);
  r.prefill = seconds(t0, first);
  r.decode = seconds(first, t1);
  return r;
}

// The generation prompts: kGenPrompts rows of kGenPromptLength tokens uniform over the vocabulary.
std::vector<std::vector<std::int64_t>> random_prompts(std::uint64_t seed) {
  Generator gen{seed + 1, 0};
  const std::vector<std::int64_t> ids =
      randint<std::int64_t>(0, kVocab, {kGenPrompts, kGenPromptLength}, Device::cpu(), gen).to_vector();
  std::vector<std::vector<std::int64_t>> prompts;
  for (std::int64_t b = 0; b < kGenPrompts; ++b)
    prompts.emplace_back(ids.begin() + b * kGenPromptLength, ids.begin() + (b + 1) * kGenPromptLength);
  return prompts;
}

nlohmann::ordered_json bench_generation(const Model& model, std::int64_t runs, std::uint64_t seed) {
  const std::vector<std::vector<std::int64_t>> prompts = random_prompts(seed);
  infer::SamplingParams params;
  params.temperature = 1.0;
  params.max_new_tokens = kGenNewTokens;
  params.seed = seed;  // no eos ids, no stop strings: every sample runs to max_new_tokens

  std::printf("\n(a) generation: %lld prompts x %lld random tokens, %lld new tokens, temperature 1.0, no eos\n",
              static_cast<long long>(kGenPrompts), static_cast<long long>(kGenPromptLength),
              static_cast<long long>(kGenNewTokens));
  infer::SamplingParams warm = params;
  warm.max_new_tokens = 8;
  // The engine's default replays each decode step as a CUDA graph; the eager runs (every kernel
  // launched from the host) show what that saves. Should the graphs fail, the eager figures stand.
  bool graphs = true;
  try {
    const GenRun w = generate_once(model, prompts, warm, true);
    std::printf("warm-up (8 new tokens, CUDA graphs): %.3f s\n", w.seconds);
  } catch (const Error& e) {
    graphs = false;
    std::printf("CUDA graphs FAILED, generation measured eagerly only: %s\n", e.what());
  }
  const GenRun we = generate_once(model, prompts, warm, false);
  std::printf("warm-up (8 new tokens, eager): %.3f s\n", we.seconds);
  std::printf("%4s %7s %9s %10s %11s %12s %13s %10s\n", "run", "mode", "tokens", "seconds", "tok/s", "prefill s",
              "decode steps", "steps/s");
  Samples samples;
  for (const bool mode : {true, false}) {
    if (mode && !graphs) continue;
    const std::string prefix = mode || !graphs ? "gen_" : "gen_eager_";
    for (std::int64_t i = 0; i < runs; ++i) {
      const GenRun r = generate_once(model, prompts, params, mode);
      std::printf("%4lld %7s %9lld %10.3f %11.0f %12.4f %13lld %10.1f\n", static_cast<long long>(i + 1),
                  mode ? "graphs" : "eager", static_cast<long long>(r.tokens), r.seconds, r.tok_s(), r.prefill,
                  static_cast<long long>(r.decode_steps), r.steps_s());
      std::fflush(stdout);
      check(r.tokens == kGenPrompts * kGenNewTokens, "bench_grpo_cuda", "generate made ", r.tokens,
            " tokens, expected ", kGenPrompts * kGenNewTokens, " (every sample should run to max_new_tokens)");
      samples.add(prefix + "tok_s", r.tok_s());
      samples.add(prefix + "steps_s", r.steps_s());
      samples.add(prefix + "s", r.seconds);
      samples.add(prefix + "prefill_s", r.prefill);
    }
  }
  nlohmann::ordered_json j = samples.medians();
  j["gen_cuda_graphs"] = graphs;
  j["gen_runs"] = runs;
  j["gen_batch"] = kGenPrompts;
  j["gen_new_tokens"] = kGenNewTokens;
  std::printf("median: %.0f tok/s, %.1f decode steps/s, %.3f s per generate (%s)\n", j["gen_tok_s"].get<double>(),
              j["gen_steps_s"].get<double>(), j["gen_s"].get<double>(), graphs ? "CUDA graphs" : "eager");
  if (graphs)
    std::printf("eager: %.0f tok/s, %.1f decode steps/s: graphs %.2fx\n", j["gen_eager_tok_s"].get<double>(),
                j["gen_eager_steps_s"].get<double>(),
                j["gen_tok_s"].get<double>() / j["gen_eager_tok_s"].get<double>());
  std::fflush(stdout);
  return j;
}

// (c) N decode steps between cudaProfilerStart and cudaProfilerStop: the progress report of step 0
// comes after the prefill's draw, that of step N after the N-th decode step.
void profile_decode(const Model& model, std::int64_t steps, bool graphs, bool speculative, std::uint64_t seed) {
  const std::vector<std::vector<std::int64_t>> prompts = random_prompts(seed);
  infer::SamplingParams params;
  params.temperature = 1.0;
  params.max_new_tokens = 8;
  params.seed = seed;
  infer::GenerateOptions options;
  options.cuda_graphs = graphs;
  options.speculative = speculative;
  infer::generate(model, prompts, params, options);  // warm-up: plans, pools, graphs
  params.max_new_tokens = steps + 1;
  bool profiling = false;
  options.on_progress = [&](const infer::GenerationProgress& p) {
    if (p.step == 0) {
      cuda::synchronize();
      KILN_CUDA_CHECK(cudaProfilerStart());
      profiling = true;
    } else if (p.step == steps && profiling) {
      cuda::synchronize();
      KILN_CUDA_CHECK(cudaProfilerStop());
      profiling = false;
    }
  };
  const auto t0 = Clock::now();
  infer::generate(model, prompts, params, options);
  cuda::synchronize();
  if (profiling) KILN_CUDA_CHECK(cudaProfilerStop());
  std::printf("profiled %lld %sdecode steps of %lld rows (%s); the whole generate took %.3f s\n",
              static_cast<long long>(steps), speculative ? "speculative " : "", static_cast<long long>(kGenPrompts),
              graphs ? "CUDA graphs" : "eager", seconds(t0, Clock::now()));
}

// ---- (b) one GRPO step -------------------------------------------------------------------------

nlohmann::ordered_json bench_grpo(Model& model, const data::Tokenizer& tok, std::int64_t steps,
                                  std::int64_t micro_batch, std::uint64_t seed, bool graphs) {
  data::TaskMix mix;  // Countdown only, the peer's sizes
  mix.countdown_fraction = 1.0;
  mix.countdown.min_numbers = 3;
  mix.countdown.max_numbers = 3;
  mix.countdown.max_number = 99;
  mix.countdown.min_target = 10;
  mix.countdown.max_target = 200;
  rl::RewardSet rewards;
  rewards.add("contains_answer_close", 1.0, [](const data::Problem&, std::string_view completion) {
    return completion.find("</answer>") != std::string_view::npos ? 1.0 : 0.0;
  });

  rl::GrpoTrainerOptions o;
  o.grpo.group_size = kGrpoGroup;
  o.grpo.loss_type = rl::LossType::dapo;
  o.grpo.beta = 0.0;
  o.grpo.num_iterations = 1;
  o.grpo.max_completion_length = kGrpoMaxNew;
  o.prompts_per_step = kGrpoPrompts;
  o.micro_batch = micro_batch;
  o.cuda_graphs = graphs;
  o.sampling.temperature = 1.0;
  o.sampling.top_p = 1.0;
  o.sampling.seed = seed;
  o.adamw.lr = 1e-5;
  o.adamw.weight_decay = 0.0;
  o.max_grad_norm = 1.0;
  o.encode_prompt = [&tok](const data::Problem& p) {
    std::vector<std::int64_t> ids{tok.bos_id().value()};
    const std::vector<std::int64_t> text = tok.encode(data::prompt(p) + "<think>");
    ids.insert(ids.end(), text.begin(), text.end());
    return ids;
  };
  rl::GrpoTrainer<Model> trainer(
      model, nullptr, tok, [mix](Generator& g) { return data::sample(mix, g, data::Split::train); }, rewards, o,
      Generator{seed * 1000003ull + 5, 0});

  std::printf("\n(b) GRPO step: %lld prompts x %lld samples, <= %lld new tokens, dapo, beta 0, micro-batch %lld\n",
              static_cast<long long>(kGrpoPrompts), static_cast<long long>(kGrpoGroup),
              static_cast<long long>(kGrpoMaxNew), static_cast<long long>(micro_batch));
  std::printf("%-7s %8s %8s | %8s %8s %8s %8s %8s | %8s %8s %9s %7s\n", "step", "wall s", "report s", "gen s",
              "score s", "logp s", "bwd s", "optim s", "gen tok", "mean len", "gen tok/s", "reward");
  Samples samples;
  for (std::int64_t i = 0; i <= steps; ++i) {
    cuda::synchronize();
    const auto t0 = Clock::now();
    const rl::StepReport r = trainer.step();
    cuda::synchronize();
    const double w = seconds(t0, Clock::now());
    const std::string label = i == 0 ? "warm-up" : std::to_string(i);
    std::printf("%-7s %8.3f %8.3f | %8.3f %8.3f %8.3f %8.3f %8.3f | %8lld %8.1f %9.0f %7.3f\n", label.c_str(), w,
                r.time.total, r.time.generation, r.time.scoring, r.time.logprobs, r.time.backward, r.time.optimizer,
                static_cast<long long>(r.generated_tokens), r.completion_len_mean, r.gen_tokens_per_s,
                r.rewards.empty() ? 0.0 : r.rewards.back().mean);
    std::fflush(stdout);
    if (i == 0) continue;
    samples.add("grpo_step_s", w);
    samples.add("grpo_gen_s", r.time.generation);
    samples.add("grpo_scoring_s", r.time.scoring);
    samples.add("grpo_logprobs_s", r.time.logprobs);
    samples.add("grpo_backward_s", r.time.backward);
    samples.add("grpo_optimizer_s", r.time.optimizer);
    samples.add("grpo_gen_tokens", static_cast<double>(r.generated_tokens));
    samples.add("grpo_gen_tok_s", r.gen_tokens_per_s);
    samples.add("grpo_mean_len", r.completion_len_mean);
  }
  nlohmann::ordered_json j = samples.medians();
  j["grpo_step_times"] = samples.values("grpo_step_s");
  j["grpo_steps"] = steps;
  j["grpo_micro_batch"] = micro_batch;
  std::printf("median: %.3f s per step (generation %.3f, scoring %.3f, log-probs %.3f, backward %.3f, optimizer %.3f); "
              "%.0f generated tokens, %.0f gen tok/s\n",
              j["grpo_step_s"].get<double>(), j["grpo_gen_s"].get<double>(), j["grpo_scoring_s"].get<double>(),
              j["grpo_logprobs_s"].get<double>(), j["grpo_backward_s"].get<double>(),
              j["grpo_optimizer_s"].get<double>(), j["grpo_gen_tokens"].get<double>(),
              j["grpo_gen_tok_s"].get<double>());
  std::fflush(stdout);
  return j;
}

}  // namespace

int main(int argc, char** argv) try {
  const example::Flags flags(argc, argv, {"profile-graphs", "profile-speculative"});
  if (flags.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const std::int64_t gen_runs = flags.integer("gen-runs", 3), steps = flags.integer("steps", 3);
  const std::int64_t micro_batch = flags.integer("micro-batch", 64);
  const auto seed = static_cast<std::uint64_t>(flags.integer("seed", 1));
  const std::string json_path = flags.str("json", "");
  const std::int64_t profile_steps = flags.integer("profile-decode", 0);
  const bool profile_graphs = flags.flag("profile-graphs");
  const bool profile_speculative = flags.flag("profile-speculative");
  flags.check_all_used();
  check(profile_steps >= 0 && profile_steps < kGenNewTokens, "bench_grpo_cuda", "--profile-decode must be in [0, ",
        kGenNewTokens, "), got ", profile_steps);
  check(gen_runs >= 0 && steps >= 0 && micro_batch >= 1, "bench_grpo_cuda",
        "--gen-runs and --steps must be >= 0, --micro-batch >= 1");
  if (!bench::open_device()) return 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  // Tokenizer (GRPO's prompts and rewards) and the model.
  const auto t_setup = Clock::now();
  const example::Corpus corpus = example::make_corpus(seed, 4000, 200);
  const data::Tokenizer tok = example::train_tokenizer(corpus, kVocab, 4000);
  check(tok.vocab_size() <= kVocab && tok.bos_id() && tok.eos_id(), "bench_grpo_cuda", "the tokenizer has ",
        tok.vocab_size(), " tokens (at most ", kVocab, " expected, with bos and eos)");
  nn::DeepseekV3Config config = example::big_config(kVocab);
  config.bos_token_id = tok.bos_id().value();
  config.eos_token_id = tok.eos_id().value();
  config.pad_token_id = tok.pad_id();
  Generator init{seed, 0};
  Model model(config, init);
  model.to(Device::cuda(0));
  std::printf("model: big config, vocabulary %lld, %lld parameters, bfloat16, random init; tokenizer %lld tokens; "
              "setup %.1f s\n",
              static_cast<long long>(kVocab), static_cast<long long>(model.num_parameters()),
              static_cast<long long>(tok.vocab_size()), seconds(t_setup, Clock::now()));
  std::fflush(stdout);

  if (profile_steps > 0) {
    profile_decode(model, profile_steps, profile_graphs, profile_speculative, seed);
    return 0;
  }
  nlohmann::ordered_json result;
  result["bench"] = "bench_grpo_cuda";
  result["device"] = prop.name;
  if (gen_runs > 0) result.update(bench_generation(model, gen_runs, seed));
  const bool graphs = !result.contains("gen_cuda_graphs") || result["gen_cuda_graphs"].get<bool>();
  if (steps > 0) result.update(bench_grpo(model, tok, steps, micro_batch, seed, graphs));
  const std::string line = result.dump();
  std::printf("\n%s\n", line.c_str());
  std::fflush(stdout);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << line << "\n";
    check(static_cast<bool>(out), "bench_grpo_cuda", "could not write ", json_path);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_grpo_cuda: %s\n", e.what());
  return 1;
}
