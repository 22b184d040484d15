// R1-Zero-style GRPO (rl/grpo_trainer.hpp) on a model pretrained by examples/pretrain (DeepSeek-V3-style
// or Llama: the base checkpoint's config.json says which): the policy
// samples G completions per problem, a rule reward grades them (accuracy of the last answer block
// + 0.5 × the <think>…</think><answer>…</answer> format, rl/rewards.hpp), and GRPO raises the
// likelihood of the better ones. Held-out accuracy is measured before and after (pass@1 over k
// samples at T = 0.6, top-p 0.95; cons@k; greedy; each with a 95% interval). See docs/grpo.md.
//
//   grpo                          pretrains the CPU default base first (examples/pretrain), then GRPO
//   grpo --base runs/a            GRPO from the pretrain run in runs/a (its checkpoint and tokenizer)
//   grpo --out runs/g             metrics.jsonl, plots/, report.md, checkpoints in runs/g
//   grpo --resume runs/g          continues an interrupted run with its saved settings
//   grpo --device cuda --config big
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <kiln/kiln.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/llama.hpp>
#include <kiln/rl/grpo_trainer.hpp>
#include <kiln/rl/jsonl.hpp>
#include <kiln/rl/policy_evaluation.hpp>

#include "../pretrain/task_data.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;

const char* kUsage = R"(grpo: R1-Zero-style GRPO on a pretrained model (DeepSeek-V3-style or Llama), rule rewards,
held-out evaluation

  --base DIR            the pretrain run to start from (DIR/checkpoint, DIR/tokenizer.json); without it,
                        examples/pretrain runs first into OUT/base with --device/--config/--seed
  --out DIR             run folder: metrics.jsonl, plots/, report.md, report.json, checkpoint/ [runs/grpo]
  --resume DIR          continue the run in DIR (its run.json settings are the defaults)
  --device cpu|cuda     [cpu]
  --config NAME         the base to pretrain when no --base is given (a pretrain --config: small,
                        big, tiny, medium, llama-tiny, llama-medium); big, medium and llama-medium
                        take the GPU defaults below (those marked big)                   [small]
  --base-steps N        pretraining steps of that base                          [small 1200, big 3000]
  --base-direct-fraction X  share of that base's documents that answer without working the steps
                        (pretrain --direct-fraction): a base with two modes for GRPO to choose   [0]
  --dtype float32|bf16  [cpu: float32, cuda: bf16]
  --steps N             GRPO steps                                               [small 150, big 300]
  --prompts N           problems per step                                                   [16]
  --group G             samples per problem                                                  [8]
  --max-completion N    new tokens per completion at most                      [small 160, big 256]
  --micro-batch N       sequences per training forward/backward                 [small 32, big 64]
  --lr X                AdamW rate (constant after warmup)                     [small 2e-4, big 5e-6]
  --warmup N            warmup steps                                                          [0]
  --beta X              KL coefficient against the frozen reference (0: none)                 [0]
  --loss grpo|bnpo|dr_grpo|dapo                                                            [dapo]
  --scale-rewards group|batch|none                                                        [group]
  --epsilon-low X       ratio clip below 1                                                  [0.2]
  --epsilon-high X      ratio clip above 1 (clip-higher)                                   [0.28]
  --mu N                policy updates per generation batch                                   [1]
  --dynamic-sampling    drop groups with equal rewards and draw more (up to 3 rounds)
  --mask-truncated      leave completions cut by --max-completion out of the loss
  --temperature X       rollout temperature                                                 [1.0]
  --top-p X             rollout top-p                                                       [1.0]
  --task arithmetic|countdown|mix   the training and evaluation problems          [arithmetic]
  --max-digits N        arithmetic operands of 1..N digits                                    [2]
  --template r1-zero|task   prompt: the R1-Zero instruction + task line, or the task line alone [task]
  --eval-problems N     held-out problems for the before/after evaluation                  [200]
  --eval-k K            samples per problem for pass@1 and cons@k                             [8]
  --eval-every N        also evaluate every N steps (0: only before and after)                [0]
  --checkpoint-every N  checkpoint every N steps                                             [10]
  --seed N              seed of problems, sampling and (when pretraining) the base            [1]
  --threads N           CPU threads                                                           [2]
  --no-plot             skip the PNG plots
  --no-cuda-graphs      GPU: launch every decode kernel from the host (default: CUDA graph replays)
  --fp8-cache           rollouts over the FP8 latent cache (e4m3 latents, 57% of the bf16 cache's
                        bytes; evaluation keeps the exact cache)
)";

struct Settings {
  std::string base, device, config, dtype, loss, scale_rewards, task, prompt_template;
  std::int64_t base_steps, steps, prompts, group, max_completion, micro_batch, warmup, mu, max_digits, eval_problems, eval_k,
      eval_every, checkpoint_every, threads;
  double lr, beta, epsilon_low, epsilon_high, temperature, top_p, base_direct_fraction;
  bool dynamic_sampling, mask_truncated, plot, cuda_graphs, fp8_cache;
  std::uint64_t seed;
};

io::ordered_json to_json(const Settings& s) {
  io::ordered_json j;
  j["base"] = s.base;
  j["device"] = s.device;
  j["config"] = s.config;
  j["base-steps"] = s.base_steps;
  j["base-direct-fraction"] = s.base_direct_fraction;
  j["dtype"] = s.dtype;
  j["steps"] = s.steps;
  j["prompts"] = s.prompts;
  j["group"] = s.group;
  j["max-completion"] = s.max_completion;
  j["micro-batch"] = s.micro_batch;
  j["lr"] = s.lr;
  j["warmup"] = s.warmup;
  j["beta"] = s.beta;
  j["loss"] = s.loss;
  j["scale-rewards"] = s.scale_rewards;
  j["epsilon-low"] = s.epsilon_low;
  j["epsilon-high"] = s.epsilon_high;
  j["mu"] = s.mu;
  j["dynamic-sampling"] = s.dynamic_sampling;
  j["mask-truncated"] = s.mask_truncated;
  j["fp8-cache"] = s.fp8_cache;
  j["temperature"] = s.temperature;
  j["top-p"] = s.top_p;
  j["task"] = s.task;
  j["max-digits"] = s.max_digits;
  j["template"] = s.prompt_template;
  j["eval-problems"] = s.eval_problems;
  j["eval-k"] = s.eval_k;
  j["eval-every"] = s.eval_every;
  j["checkpoint-every"] = s.checkpoint_every;
  j["seed"] = static_cast<std::int64_t>(s.seed);
  j["plot"] = s.plot;  // a resumed run plots as the run did (r1_pipeline's stages pass --no-plot once)
  return j;
}

Settings parse(int argc, char** argv, std::string& out, std::string& resume) {
  example::Flags f(argc, argv, {"dynamic-sampling", "mask-truncated", "no-plot", "no-cuda-graphs", "fp8-cache"});
  if (f.has("help")) {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  resume = f.str("resume", "");
  out = f.str("out", resume.empty() ? "runs/grpo" : resume);
  io::json saved = io::json::object();
  if (!resume.empty()) {
    const std::string path = resume + "/run.json";
    check(std::filesystem::exists(path), "grpo", "--resume ", resume, ": no run.json there (not a grpo run folder)");
    saved = io::parse_json(io::read_text_file(path, "grpo"), "grpo", path);
  }
  auto s_ = [&](const char* k, const std::string& d) { return f.str(k, saved.contains(k) ? saved[k].get<std::string>() : d); };
  auto i_ = [&](const char* k, std::int64_t d) { return f.integer(k, saved.contains(k) ? saved[k].get<std::int64_t>() : d); };
  auto r_ = [&](const char* k, double d) { return f.real(k, saved.contains(k) ? saved[k].get<double>() : d); };
  auto b_ = [&](const char* k) { return f.flag(k) || (saved.contains(k) && saved[k].get<bool>()); };

  Settings s;
  s.base = s_("base", "");
  s.device = s_("device", "cpu");
  s.config = s_("config", "small");
  check(s.device == "cpu" || s.device == "cuda", "grpo", "--device must be cpu or cuda, got ", s.device);
  check(example::is_config_name(s.config), "grpo",
        "--config must be small, big, tiny, medium, llama-tiny or llama-medium, got ", s.config);
  const bool big = example::gpu_sized(s.config);
  s.dtype = s_("dtype", s.device == "cuda" ? "bf16" : "float32");
  check(s.dtype == "float32" || s.dtype == "bf16", "grpo", "--dtype must be float32 or bf16, got ", s.dtype);
  s.base_steps = i_("base-steps", big ? 3000 : 1200);
  s.base_direct_fraction = r_("base-direct-fraction", 0.0);
  check(s.base_direct_fraction >= 0.0 && s.base_direct_fraction <= 1.0, "grpo", "--base-direct-fraction must lie in [0, 1], got ",
        s.base_direct_fraction);
  s.steps = i_("steps", big ? 300 : 150);
  s.prompts = i_("prompts", 16);
  s.group = i_("group", 8);
  s.max_completion = i_("max-completion", big ? 256 : 160);
  s.micro_batch = i_("micro-batch", big ? 64 : 32);
  s.lr = r_("lr", big ? 5e-6 : 2e-4);
  s.warmup = i_("warmup", 0);
  s.beta = r_("beta", 0.0);
  s.loss = s_("loss", "dapo");
  s.scale_rewards = s_("scale-rewards", "group");
  s.epsilon_low = r_("epsilon-low", 0.2);
  s.epsilon_high = r_("epsilon-high", 0.28);
  s.mu = i_("mu", 1);
  s.dynamic_sampling = b_("dynamic-sampling");
  s.mask_truncated = b_("mask-truncated");
  s.temperature = r_("temperature", 1.0);
  s.top_p = r_("top-p", 1.0);
  s.task = s_("task", "arithmetic");
  check(s.task == "arithmetic" || s.task == "countdown" || s.task == "mix", "grpo",
        "--task must be arithmetic, countdown or mix, got ", s.task);
  s.max_digits = i_("max-digits", 2);
  check(s.max_digits >= 1 && s.max_digits <= 9, "grpo", "--max-digits must lie in 1..9, got ", s.max_digits);
  s.prompt_template = s_("template", "task");
  check(s.prompt_template == "r1-zero" || s.prompt_template == "task", "grpo",
        "--template must be r1-zero or task, got ", s.prompt_template);
  s.eval_problems = i_("eval-problems", 200);
  s.eval_k = i_("eval-k", 8);
  s.eval_every = i_("eval-every", 0);
  s.checkpoint_every = i_("checkpoint-every", 10);
  s.seed = static_cast<std::uint64_t>(i_("seed", 1));
  s.threads = f.integer("threads", 2);
  s.plot = !(f.flag("no-plot") || (saved.contains("plot") && !saved["plot"].get<bool>()));
  s.cuda_graphs = !f.flag("no-cuda-graphs");
  s.fp8_cache = b_("fp8-cache");
  f.check_all_used();
  check(s.base_steps >= 1 && s.steps >= 1 && s.prompts >= 1 && s.group >= 2 && s.max_completion >= 1 && s.micro_batch >= 1 && s.mu >= 1 &&
            s.eval_problems >= 1 && s.eval_k >= 1 && s.threads >= 1 && s.checkpoint_every >= 1 && s.eval_every >= 0,
        "grpo", "base-steps, steps, prompts, max-completion, micro-batch, mu, eval-problems, eval-k, threads, checkpoint-every must "
        "be positive, group >= 2");
  (void)rl::parse_loss_type(s.loss);
  (void)rl::parse_scale_rewards(s.scale_rewards);
  return s;
}

// The pretraining corpus of a base made for this run: the run's task, with arithmetic operands of
// up to one digit more than the run's problems (their single-digit facts then also appear inside
// the column-by-column steps of longer ones, so held-out problems are not memorised but computed).
int base_max_digits(const Settings& s) { return static_cast<int>(std::min<std::int64_t>(s.max_digits + 1, 9)); }
double countdown_fraction(const Settings& s) { return s.task == "arithmetic" ? 0.0 : s.task == "countdown" ? 1.0 : 0.5; }

// x with as few digits as read back the same ("0.5", not std::to_string's "0.500000").
std::string shortest(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

// Runs examples/pretrain (next to this program) into `dir` with the run's device/config/seed, on the
// run's task (base_max_digits, countdown_fraction) for --base-steps steps.
std::string pretrain_base(const char* argv0, const Settings& s, const std::string& dir) {
  const std::filesystem::path self = std::filesystem::absolute(argv0);
  const std::filesystem::path pretrain = self.parent_path() / "pretrain";
  check(std::filesystem::exists(pretrain), "grpo", "no --base given and ", pretrain.string(),
        " not found: build the pretrain example, or pass --base DIR of a pretrain run");
  const std::string cmd = "'" + pretrain.string() + "' --out '" + dir + "' --device " + s.device + " --config " +
                          s.config + " --seed " + std::to_string(s.seed) + " --threads " + std::to_string(s.threads) +
                          " --steps " + std::to_string(s.base_steps) + " --max-digits " +
                          std::to_string(base_max_digits(s)) + " --countdown-fraction " +
                          shortest(countdown_fraction(s)) + " --direct-fraction " + shortest(s.base_direct_fraction) +
                          " --samples 0";
  std::printf("no --base: pretraining one first\n$ %s\n", cmd.c_str());
  std::fflush(stdout);
  const int rc = std::system(cmd.c_str());
  check(rc == 0, "grpo", "pretraining the base failed (exit status ", rc, ")");
  return dir;
}

data::TaskMix task_mix(const Settings& s) {
  data::TaskMix mix = example::task_mix();
  mix.arithmetic.min_digits = 1;
  mix.arithmetic.max_digits = static_cast<int>(s.max_digits);
  mix.countdown_fraction = countdown_fraction(s);
  return mix;
}

void print_eval(const char* when, const rl::PolicyEvalReport& r) {
  std::printf("%s: pass@1 %.3f [%.3f, %.3f] | cons@%lld %.3f [%.3f, %.3f] | greedy %.3f [%.3f, %.3f] | length %.1f | "
              "format %.2f  (%lld held-out problems)\n",
              when, r.pass_at_1.estimate, r.pass_at_1.lo, r.pass_at_1.hi, static_cast<long long>(r.k),
              r.cons_at_k.estimate, r.cons_at_k.lo, r.cons_at_k.hi, r.greedy.estimate, r.greedy.lo, r.greedy.hi,
              r.mean_length.estimate, r.format_rate, static_cast<long long>(r.problems));
  std::fflush(stdout);
}

io::ordered_json step_json(const rl::StepReport& r) {
  io::ordered_json j;
  j["step"] = r.step;
  for (const rl::RewardStats& st : r.rewards) {
    if (st.name == "total") {
      j["reward_mean"] = st.mean;
      j["reward_std"] = st.std;
    } else {
      j["reward/" + st.name + "/mean"] = st.mean;
      j["reward/" + st.name + "/std"] = st.std;
    }
  }
  j["frac_reward_zero_std"] = r.frac_reward_zero_std;
  j["completion_len_mean"] = r.completion_len_mean;
  j["completion_len_max"] = r.completion_len_max;
  j["truncated_frac"] = r.truncated_frac;
  if (r.kl) j["kl"] = *r.kl;
  j["entropy"] = r.entropy;
  j["clip_low"] = r.clip_low;
  j["clip_high"] = r.clip_high;
  j["clip_region"] = r.clip_region;
  j["grad_norm"] = r.grad_norm;
  j["lr"] = r.lr;
  j["groups"] = r.groups;
  j["rounds"] = r.rounds;
  j["gen_tok_s"] = r.gen_tokens_per_s;
  j["train_tok_s"] = r.train_tokens_per_s;
  j["step_s"] = r.time.total;
  j["time_generation_s"] = r.time.generation;
  j["time_scoring_s"] = r.time.scoring;
  j["time_logprobs_s"] = r.time.logprobs;
  j["time_backward_s"] = r.time.backward;
  j["time_optimizer_s"] = r.time.optimizer;
  return j;
}

// The plots (scripts/plot_grpo.py, matplotlib): a Python that has matplotlib is looked for.
void plot(const std::string& out) {
#ifdef KILN_SOURCE_DIR
  if (example::run_python(std::string(KILN_SOURCE_DIR) + "/scripts/plot_grpo.py",
                          "'" + out + "/metrics.jsonl' '" + out + "/plots'")) {
    std::printf("plots: %s/plots/\n", out.c_str());
    return;
  }
  std::printf("plots skipped: no python3 with matplotlib (scripts/install-deps.sh installs it)\n");
#else
  std::printf("plots skipped: run scripts/plot_grpo.py %s/metrics.jsonl %s/plots\n", out.c_str(), out.c_str());
#endif
}

// The run on a base whose model is Model (nn::DeepseekV3ForCausalLM<T> or nn::LlamaForCausalLM<T>);
// the base is in place and run.json written (main).
template <class T, class Model>
int run(const Settings& s, const std::string& out, const std::string& resume, Clock::time_point start) {
  const Device device = s.device == "cuda" ? Device::cuda(0) : Device::cpu();

  // The base: the pretrain run's checkpoint and tokenizer.
  const std::string base_checkpoint = s.base + "/checkpoint", base_tokenizer = s.base + "/tokenizer.json";
  const data::Tokenizer tok = data::Tokenizer::load(base_tokenizer);
  const typename Model::Config config = io::load_model_config<typename Model::Config>(base_checkpoint);
  check(config.vocab_size >= tok.vocab_size(), "grpo", "the base model's vocabulary (", config.vocab_size,
        ") is smaller than its tokenizer's (", tok.vocab_size(), "): mismatched --base");
  Generator init{s.seed, 0};
  Model policy(config, init);
  io::load_model(base_checkpoint, policy);
  policy.to(device);
  std::unique_ptr<Model> reference;
  if (s.beta != 0.0) {
    reference = std::make_unique<Model>(config, init);
    reference->to(device);
  }
  std::printf("policy: %s (%lld parameters) from %s on %s, %s\n", io::load_model_type(base_checkpoint).c_str(),
              static_cast<long long>(policy.num_parameters()), s.base.c_str(), device.name().c_str(), dtype_name<T>);

  // Problems: training from the train split, evaluation from the held-out test split.
  const data::TaskMix mix = task_mix(s);
  auto encode = [&](const data::Problem& p) {
    if (s.prompt_template == "r1-zero") return rl::encode_r1_zero_prompt(tok, p);
    std::vector<std::int64_t> ids{tok.bos_id().value()};
    const auto text = tok.encode(data::prompt(p));
    ids.insert(ids.end(), text.begin(), text.end());
    return ids;
  };
  Generator eval_gen{s.seed + 7777, 0};
  const std::vector<data::Problem> held_out = data::sample_distinct(mix, eval_gen, data::Split::test, s.eval_problems);
  rl::PolicyEvalOptions eval_options;
  eval_options.k = s.eval_k;
  eval_options.max_new_tokens = s.max_completion;
  eval_options.seed = s.seed + 13;
  eval_options.encode_prompt = encode;
  eval_options.cuda_graphs = s.cuda_graphs;

  rl::GrpoTrainerOptions o;
  o.grpo.group_size = s.group;
  o.grpo.loss_type = rl::parse_loss_type(s.loss);
  o.grpo.scale_rewards = rl::parse_scale_rewards(s.scale_rewards);
  o.grpo.epsilon_low = s.epsilon_low;
  o.grpo.epsilon_high = s.epsilon_high;
  o.grpo.beta = s.beta;
  o.grpo.max_completion_length = s.max_completion;
  o.grpo.mask_truncated_completions = s.mask_truncated;
  o.grpo.num_iterations = s.mu;
  o.grpo.dynamic_sampling = s.dynamic_sampling;
  o.grpo.dynamic_sampling_max_rounds = 3;
  o.prompts_per_step = s.prompts;
  o.micro_batch = s.micro_batch;
  o.cuda_graphs = s.cuda_graphs;
  o.fp8_cache = s.fp8_cache;
  o.sampling.temperature = s.temperature;
  o.sampling.top_p = s.top_p;
  o.sampling.stop_strings = {"</answer>"};
  o.sampling.seed = s.seed;
  o.adamw.lr = s.lr;
  o.warmup_steps = s.warmup;
  o.encode_prompt = encode;
  rl::GrpoTrainer<Model> trainer(
      policy, reference.get(), tok,
      [mix](Generator& g) { return data::sample(mix, g, data::Split::train); }, rl::r1_zero_rewards(), o,
      Generator{s.seed * 1000003ull + 5, 0});

  const std::string checkpoint = out + "/checkpoint";
  io::ordered_json report;
  report["settings"] = to_json(s);
  std::optional<rl::PolicyEvalReport> before;
  if (!resume.empty() && std::filesystem::exists(checkpoint)) {
    const io::TrainerState state = io::load_training_checkpoint(checkpoint, policy, config, trainer.optimizer());
    trainer.restore(state.step, state.rng);
    if (state.extra.contains("before")) report["before"] = state.extra["before"];
    std::printf("resumed from %s at step %lld\n", checkpoint.c_str(), static_cast<long long>(state.step));
  } else {
    const auto t = Clock::now();
    before = rl::evaluate_policy(policy, tok, held_out, eval_options);
    print_eval("before", *before);
    std::printf("  (evaluation %.1f s)\n", std::chrono::duration<double>(Clock::now() - t).count());
    report["before"] = rl::to_json(*before);
  }

  rl::JsonlWriter metrics(out + "/metrics.jsonl", /*append=*/!resume.empty());
  auto save = [&] {
    io::TrainerState state;
    state.step = trainer.steps_done();
    state.rng = trainer.problem_rng();
    state.lr = s.lr;
    state.extra = io::json(io::ordered_json{{"before", report["before"]}});
    io::save_training_checkpoint(checkpoint, policy, config, trainer.optimizer(), state);
  };
  const auto t_train = Clock::now();
  while (trainer.steps_done() < s.steps) {
    const rl::StepReport r = trainer.step();
    io::ordered_json j = step_json(r);
    metrics.write(io::json(j));
    const rl::RewardStats& total = r.rewards.back();
    std::printf("step %lld/%lld | reward %.3f ± %.3f | acc %.3f | fmt %.3f | zero-std %.2f | len %.0f (max %.0f, "
                "trunc %.2f) | entropy %.3f%s | clip %.3f | %.0f gen tok/s | %.1f s (gen %.1f, train %.1f)\n",
                static_cast<long long>(r.step), static_cast<long long>(s.steps), total.mean, total.std,
                r.rewards.front().mean, r.rewards.size() > 2 ? r.rewards[1].mean : 0.0, r.frac_reward_zero_std,
                r.completion_len_mean, r.completion_len_max, r.truncated_frac, r.entropy,
                r.kl ? str(" | kl ", *r.kl).c_str() : "", r.clip_region, r.gen_tokens_per_s, r.time.total,
                r.time.generation, r.time.logprobs + r.time.backward + r.time.optimizer);
    std::fflush(stdout);
    if (trainer.steps_done() % s.checkpoint_every == 0 || trainer.steps_done() == s.steps) save();
    if (s.eval_every > 0 && trainer.steps_done() % s.eval_every == 0 && trainer.steps_done() < s.steps)
      print_eval(str("step ", trainer.steps_done()).c_str(), rl::evaluate_policy(policy, tok, held_out, eval_options));
  }
  const double train_seconds = std::chrono::duration<double>(Clock::now() - t_train).count();

  const rl::PolicyEvalReport after = rl::evaluate_policy(policy, tok, held_out, eval_options);
  if (report.contains("before")) {
    const auto& b = report["before"];
    std::printf("before: pass@1 %.3f [%.3f, %.3f] | cons@%lld %.3f [%.3f, %.3f] | greedy %.3f [%.3f, %.3f]\n",
                b["pass_at_1"]["estimate"].get<double>(), b["pass_at_1"]["lo"].get<double>(),
                b["pass_at_1"]["hi"].get<double>(), static_cast<long long>(s.eval_k),
                b["cons_at_k"]["estimate"].get<double>(), b["cons_at_k"]["lo"].get<double>(),
                b["cons_at_k"]["hi"].get<double>(), b["greedy"]["estimate"].get<double>(),
                b["greedy"]["lo"].get<double>(), b["greedy"]["hi"].get<double>());
  }
  print_eval("after ", after);
  report["after"] = rl::to_json(after);
  if (report.contains("before") && report["before"].contains("per_problem_pass_at_1")) {
    // Both on the same held-out problems: the change as a paired difference (rl/evaluation.hpp).
    const rl::Interval d = rl::paired_difference_interval(
        after.per_problem, report["before"]["per_problem_pass_at_1"].get<std::vector<double>>());
    std::printf("change: pass@1 %+.3f, paired 95%% interval [%+.3f, %+.3f]%s\n", d.estimate, d.lo, d.hi,
                d.lo > 0.0 ? " (an improvement beyond the noise)" : d.hi < 0.0 ? " (worse beyond the noise)" : "");
    report["change"] = {{"pass_at_1", d.estimate}, {"lo", d.lo}, {"hi", d.hi}};
  }
  report["train_seconds"] = train_seconds;
  report["total_seconds"] = std::chrono::duration<double>(Clock::now() - start).count();
  io::write_file_atomically(out + "/report.json", io::dump_json(report, "grpo", out + "/report.json", 2) + "\n", "grpo");
  if (s.plot) plot(out);
  std::printf("GRPO: %lld steps in %.1f s; total wall time %.1f s; run folder %s\n",
              static_cast<long long>(trainer.steps_done()), train_seconds,
              std::chrono::duration<double>(Clock::now() - start).count(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const auto start = Clock::now();
  std::string out, resume;
  Settings s = parse(argc, argv, out, resume);
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(s.threads));
#endif
  if (s.device == "cuda") {
#ifndef KILN_EXAMPLE_CUDA
    throw Error("--device cuda needs a build with the CUDA backend (cmake -DKILN_CUDA=ON)");
#endif
  }
  std::filesystem::create_directories(out);
  if (s.base.empty()) s.base = pretrain_base(argv[0], s, out + "/base");
  io::write_file_atomically(out + "/run.json", io::dump_json(to_json(s), "grpo", out + "/run.json", 2) + "\n", "grpo");
  check(std::filesystem::exists(s.base + "/tokenizer.json"), "grpo", "--base ", s.base,
        ": no tokenizer.json there (expected the --out folder of a pretrain run)");
  // The base's config.json names its model.
  const std::string type = io::load_model_type(s.base + "/checkpoint");
  check(type == "deepseek_v3" || type == "llama", "grpo", "--base ", s.base, ": a ", type,
        " model; examples/grpo trains deepseek_v3 and llama models");
  const bool llama = type == "llama";
  if (s.dtype == "bf16")
    return llama ? run<bf16, nn::LlamaForCausalLM<bf16>>(s, out, resume, start)
                 : run<bf16, nn::DeepseekV3ForCausalLM<bf16>>(s, out, resume, start);
  return llama ? run<float, nn::LlamaForCausalLM<float>>(s, out, resume, start)
               : run<float, nn::DeepseekV3ForCausalLM<float>>(s, out, resume, start);
} catch (const std::exception& e) {
  std::fprintf(stderr, "grpo: %s\n", e.what());
  return 1;
}
