// Pretrains a small DeepSeek-V3-style model (MLA attention, MoE with aux-loss-free balancing,
// multi-token prediction), or a dense Llama (--config llama-tiny|llama-medium: the R1 pipeline's
// students of another family), on a corpus of worked solutions to arithmetic and Countdown problems,
// with kiln's trainer (train/trainer.hpp): warmup + cosine schedule, AdamW, global-norm clipping,
// gradient accumulation, progress lines with tokens/s (and MFU on a GPU) and expert MaxVio,
// validation on held-out problems, atomic checkpoints and --resume. See docs/training.md.
//
//   pretrain                                   the CPU default (a few minutes on 2 cores)
//   pretrain --device cuda --config big        ~100M parameters on a GPU (bf16, FP32 master weights)
//   pretrain --out runs/a                      checkpoints in runs/a/checkpoint, tokenizer runs/a/tokenizer.json
//   pretrain --resume runs/a                   continues runs/a with its saved settings
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <kiln/infer/engine.hpp>
#include <kiln/kiln.hpp>
#include <kiln/nn/fp8_training.hpp>
#include <kiln/train/trainer.hpp>

#include "fp8_probe.hpp"
#include "task_data.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef KILN_EXAMPLE_CUDA
#include <cuda_runtime.h>

#include <kiln/kernels/matmul/cublaslt.hpp>
#endif

namespace {

using namespace kiln;
using Clock = std::chrono::steady_clock;

const char* kUsage = R"(pretrain: a small DeepSeek-V3-style MoE model on worked arithmetic / Countdown solutions

  --device cpu|cuda     where to train (cuda needs a build with KILN_CUDA=ON)       [cpu]
  --config NAME         small: the CPU default (hidden 128, 2 layers); big: ~100M params; tiny and
                        medium: the R1 pipeline's students (0.26M and 16M parameters);
                        llama-tiny and llama-medium: dense Llama students of about their
                        sizes (grouped-query attention, no MoE or MTP); the tiny ones take
                        small's defaults below, the medium ones big's                     [small]
  --dtype float32|bf16  parameter dtype; bf16 keeps FP32 master weights in AdamW    [cpu: float32, cuda: bf16]
  --steps N             optimizer steps                                  [small 400, big 3000]
  --batch N             sequences per micro-batch                        [small 16, big 32]
  --accum N             micro-batches per step (gradient accumulation)   [1]
  --seq N               tokens per sequence                              [small 128, big 512]
  --lr X                peak learning rate (warmup, then cosine to lr/10) [small 3e-3, big 6e-4]
  --warmup N            warmup steps                                      [steps/20]
  --weight-decay X      AdamW decoupled weight decay                      [0.1]
  --clip X              global gradient-norm clipping threshold           [1.0]
  --docs N              training documents generated                      [small 6000, big 200000]
  --vocab N             BPE vocabulary size                               [small 512, big 2048]
  --max-digits N        arithmetic operands of 1..N digits in the corpus  [3]
  --countdown-fraction X  share of Countdown documents in the corpus      [0.5]
  --direct-fraction X     share of documents that answer without working the steps
                          (an empty think block): a base with two modes, for GRPO to choose [0]
  --seed N              seed of corpus, model and batches                 [1]
  --out DIR             write DIR/tokenizer.json, DIR/run.json and checkpoints in DIR/checkpoint
  --resume DIR          continue the run in DIR (its settings are the defaults; --out defaults to DIR)
  --tokenizer FILE      load this tokenizer (kiln or Hugging Face tokenizer.json) instead of training one
  --log-every N         progress line every N steps                       [small 20, big 50]
  --eval-every N        validation every N steps                          [small 100, big 500]
  --eval-batches N      validation batches                                [8]
  --checkpoint-every N  checkpoint every N steps (with --out)              [small 100, big 500]
  --peak TFLOPS         the device's dense peak for MFU (default: from a table by GPU name)
  --tf32                float32 on a GPU: allow TF32 tensor cores
  --fp8                 train the linear layers' GEMMs in FP8 (DeepSeek-V3 recipe: 1x128 activation
                        tiles, 128x128 weight blocks; embedding, output head, gates, norms and
                        attention keep the model's dtype; nn/fp8_training.hpp)
  --fp8-keep LIST       with --fp8: linears whose names contain one of these comma-separated parts
                        keep the model's dtype too (e.g. self_attn or experts,shared_experts)  []
  --fp8-gemms LIST      with --fp8 or --fp8-probe: which products of each FP8 linear run in FP8,
                        comma-separated from forward, dgrad, wgrad (the others unquantized, an
                        ablation of the recipe), or none; add expert-wgrad for the fused MoE
                        path's expert weight gradients in FP8 too (with wgrad; the k-grouped
                        FP8 GEMM, not yet run on a GPU)               [forward,dgrad,wgrad]
  --fp8-probe           at the end: one step's gradients with the FP8 linears of --fp8 (and
                        --fp8-keep) against the model's dtype, per kind of parameter (relative
                        error, cosine; examples/pretrain/fp8_probe.hpp), with or without --fp8
  --attention fused|composed  on a GPU in bf16: the fused attention kernel, or the composed
                        ops (matmul, mask, softmax, matmul) it replaces, for comparison   [fused]
  --moe automatic|fused|composed  the sync-free MoE kernels (routing, device layout, grouped
                        expert GEMMs), or the composed module (host sort, one SwiGLU per expert)
                        they replace; automatic: fused on a GPU in bf16, composed elsewhere; fused
                        on the CPU runs the kernels' reference loops (slow; for checking) [automatic]
  --samples N           greedy completions of test problems printed at the end [3]
  --time-phases         after each progress line, where the steps' wall time went on the host
                        (data, forward+backward enqueued, the reads that wait for the GPU,
                        clip, optimizer, balance; the host's waits; train/trainer.hpp StepPhases)
  --threads N           CPU threads (OpenMP, Eigen); the small model's ops are too small to share
                        well, and on a busy machine extra threads mostly wait   [1]
)";

std::string gpu_name() {
#ifdef KILN_EXAMPLE_CUDA
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) return p.name;
#endif
  return "";
}

// The settings of a run, saved as DIR/run.json so that --resume DIR continues it unchanged.
struct Settings {
  std::string device, config, dtype, tokenizer, attention, moe, fp8_keep, fp8_gemms;
  std::int64_t steps, batch, accum, seq, warmup, docs, vocab, max_digits, log_every, eval_every, eval_batches,
      checkpoint_every, samples, threads;
  double lr, weight_decay, clip, peak_tflops, countdown_fraction, direct_fraction;
  std::uint64_t seed;
  bool tf32, fp8, fp8_probe, time_phases;
};

// --fp8-gemms: the FP8 linears' options with the listed products in FP8 ("none": no product).
nn::Fp8LinearOptions fp8_options(const std::string& list) {
  nn::Fp8LinearOptions o;
  o.fp8_forward = o.fp8_dgrad = o.fp8_wgrad = false;
  if (list == "none") return o;
  std::size_t begin = 0;
  while (begin <= list.size()) {
    const std::size_t end = std::min(list.find(',', begin), list.size());
    const std::string part = list.substr(begin, end - begin);
    if (part == "forward") o.fp8_forward = true;
    else if (part == "dgrad") o.fp8_dgrad = true;
    else if (part == "wgrad") o.fp8_wgrad = true;
    else if (part == "expert-wgrad") o.grouped_fp8_wgrad = true;
    else throw Error("--fp8-gemms takes forward, dgrad, wgrad and expert-wgrad (comma-separated) or none, got " + list);
    begin = end + 1;
  }
  if (o.grouped_fp8_wgrad && !o.fp8_wgrad)
    throw Error("--fp8-gemms: expert-wgrad quantizes the experts' weight gradients as wgrad does the others'; list "
                "wgrad too, got " + list);
  return o;
}

Settings parse(int argc, char** argv, std::string& out, std::string& resume) {
  example::Flags f(argc, argv, {"tf32", "fp8", "fp8-probe", "time-phases"});
  if (f.has("help")) {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  resume = f.str("resume", "");
  out = f.str("out", resume);
  // A resumed run takes its saved settings as defaults.
  io::json saved = io::json::object();
  if (!resume.empty()) {
    const std::string path = resume + "/run.json";
    saved = io::parse_json(io::read_text_file(path, "pretrain"), "pretrain", path);
  }
  auto s_ = [&](const char* k, const std::string& d) { return f.str(k, saved.contains(k) ? saved[k].get<std::string>() : d); };
  auto i_ = [&](const char* k, std::int64_t d) { return f.integer(k, saved.contains(k) ? saved[k].get<std::int64_t>() : d); };
  auto r_ = [&](const char* k, double d) { return f.real(k, saved.contains(k) ? saved[k].get<double>() : d); };

  Settings s;
  s.device = s_("device", "cpu");
  s.config = s_("config", "small");
  if (s.device != "cpu" && s.device != "cuda") throw Error("--device must be cpu or cuda, got " + s.device);
  if (!example::is_config_name(s.config))
    throw Error("--config must be small, big, tiny, medium, llama-tiny or llama-medium, got " + s.config);
  const bool big = example::gpu_sized(s.config);
  s.dtype = s_("dtype", s.device == "cuda" ? "bf16" : "float32");
  s.steps = i_("steps", big ? 3000 : 400);
  s.batch = i_("batch", big ? 32 : 16);
  s.accum = i_("accum", 1);
  s.seq = i_("seq", big ? 512 : 128);
  s.lr = r_("lr", big ? 6e-4 : 3e-3);
  s.warmup = i_("warmup", s.steps / 20);
  s.weight_decay = r_("weight-decay", 0.1);
  s.clip = r_("clip", 1.0);
  s.docs = i_("docs", big ? 200000 : 6000);
  s.vocab = i_("vocab", big ? 2048 : 512);
  s.max_digits = i_("max-digits", 3);
  s.countdown_fraction = r_("countdown-fraction", 0.5);
  s.direct_fraction = r_("direct-fraction", 0.0);
  s.seed = static_cast<std::uint64_t>(i_("seed", 1));
  s.tokenizer = s_("tokenizer", "");
  s.log_every = i_("log-every", big ? 50 : 20);
  s.eval_every = i_("eval-every", big ? 500 : 100);
  s.eval_batches = i_("eval-batches", 8);
  s.checkpoint_every = i_("checkpoint-every", big ? 500 : 100);
  s.peak_tflops = r_("peak", 0.0);
  s.samples = i_("samples", 3);
  s.threads = f.integer("threads", 1);
  s.attention = f.str("attention", "fused");  // a property of the run, not of the model: not saved
  s.moe = f.str("moe", "automatic");          // the same
  s.tf32 = f.flag("tf32") || (saved.contains("tf32") && saved["tf32"].get<bool>());
  s.fp8 = f.flag("fp8") || (saved.contains("fp8") && saved["fp8"].get<bool>());
  s.fp8_keep = s_("fp8-keep", "");
  s.fp8_gemms = s_("fp8-gemms", "forward,dgrad,wgrad");
  s.fp8_probe = f.flag("fp8-probe");  // a diagnostic of this call: not saved
  s.time_phases = f.flag("time-phases");  // the same
  f.check_all_used();
  if (s.threads < 1) throw Error("--threads must be positive");
  if (s.attention != "fused" && s.attention != "composed")
    throw Error("--attention must be fused or composed, got " + s.attention);
  if (s.moe != "automatic" && s.moe != "fused" && s.moe != "composed")
    throw Error("--moe must be automatic, fused or composed, got " + s.moe);
  if (!s.fp8_keep.empty() && !s.fp8 && !s.fp8_probe)
    throw Error("--fp8-keep " + s.fp8_keep + " needs --fp8 or --fp8-probe");
  (void)fp8_options(s.fp8_gemms);  // checks the list
  if (s.steps < 1 || s.batch < 1 || s.accum < 1 || s.seq < 2 || s.docs < 10 || s.vocab < 300 || !(s.lr > 0))
    throw Error("steps, batch, accum, docs must be positive, seq >= 2, vocab >= 300, lr > 0");
  if (s.dtype != "float32" && s.dtype != "bf16") throw Error("--dtype must be float32 or bf16, got " + s.dtype);
  if (s.max_digits < 1 || s.max_digits > 9) throw Error("--max-digits must lie in 1..9, got " + std::to_string(s.max_digits));
  if (!(s.countdown_fraction >= 0.0 && s.countdown_fraction <= 1.0))
    throw Error("--countdown-fraction must lie in [0, 1], got " + std::to_string(s.countdown_fraction));
  if (!(s.direct_fraction >= 0.0 && s.direct_fraction <= 1.0))
    throw Error("--direct-fraction must lie in [0, 1], got " + std::to_string(s.direct_fraction));
  return s;
}

void save_settings(const std::string& path, const Settings& s) {
  io::ordered_json j;
  j["device"] = s.device;
  j["config"] = s.config;
  j["dtype"] = s.dtype;
  j["steps"] = s.steps;
  j["batch"] = s.batch;
  j["accum"] = s.accum;
  j["seq"] = s.seq;
  j["lr"] = s.lr;
  j["warmup"] = s.warmup;
  j["weight-decay"] = s.weight_decay;
  j["clip"] = s.clip;
  j["docs"] = s.docs;
  j["vocab"] = s.vocab;
  j["max-digits"] = s.max_digits;
  j["countdown-fraction"] = s.countdown_fraction;
  j["direct-fraction"] = s.direct_fraction;
  j["seed"] = static_cast<std::int64_t>(s.seed);
  j["log-every"] = s.log_every;
  j["eval-every"] = s.eval_every;
  j["eval-batches"] = s.eval_batches;
  j["checkpoint-every"] = s.checkpoint_every;
  j["peak"] = s.peak_tflops;
  j["tf32"] = s.tf32;
  j["fp8"] = s.fp8;
  j["fp8-keep"] = s.fp8_keep;
  j["fp8-gemms"] = s.fp8_gemms;
  io::write_file_atomically(path, io::dump_json(j, "pretrain", path, 2) + "\n", "pretrain");
}

// --fp8-keep: the output head, and every linear whose name contains one of the comma-separated parts.
std::function<bool(const std::string&)> fp8_keep(const std::string& list) {
  std::vector<std::string> parts;
  for (std::size_t at = 0; at <= list.size();) {
    const std::size_t comma = std::min(list.find(',', at), list.size());
    if (comma > at) parts.push_back(list.substr(at, comma - at));
    at = comma + 1;
  }
  return [parts](const std::string& name) {
    return nn::is_output_head(name) ||
           std::any_of(parts.begin(), parts.end(), [&](const std::string& p) { return name.find(p) != std::string::npos; });
  };
}

// Greedy completions of several prompts (each after bos), decoded together by the generation
// engine over the model's cache (infer/engine.hpp: MLA's latent, Llama's keys and values) until
// eos or `max_new` tokens.
template <class Model>
std::vector<std::string> greedy_completions(const Model& model, const data::Tokenizer& tok,
                                            const std::vector<std::string>& prompts, int max_new) {
  std::vector<std::vector<std::int64_t>> ids;
  for (const std::string& prompt : prompts) {
    ids.push_back({tok.bos_id().value()});
    const auto p = tok.encode(prompt);
    ids.back().insert(ids.back().end(), p.begin(), p.end());
  }
  infer::SamplingParams params;
  params.greedy = true;
  params.max_new_tokens = max_new;
  params.eos_token_ids = {tok.eos_id().value()};
  infer::GenerateOptions options;
  options.tokenizer = &tok;  // text without the eos; draws only among the tokenizer's ids
  std::vector<std::string> out;
  for (const infer::Completion& c : infer::generate(model, ids, params, options)) out.push_back(c.text);
  return out;
}

// The model of --config: DeepSeek-V3-style or Llama, as Model is.
template <class Model>
typename Model::Config model_config(const std::string& name, std::int64_t vocab) {
  if constexpr (std::is_same_v<typename Model::Config, nn::LlamaConfig>)
    return example::named_llama_config(name, vocab);
  else
    return example::named_config(name, vocab);
}

std::string describe(const nn::DeepseekV3Config& c) {
  return str("DeepSeek-V3-style: hidden ", c.hidden_size, ", ", c.num_hidden_layers, " layers (",
             c.first_k_dense_replace, " dense), ", c.n_routed_experts, " routed experts top-", c.num_experts_per_tok,
             " + ", c.n_shared_experts, " shared, MTP depth ", c.num_nextn_predict_layers);
}

std::string describe(const nn::LlamaConfig& c) {
  return str("Llama (dense): hidden ", c.hidden_size, ", ", c.num_hidden_layers, " layers, ", c.num_attention_heads,
             " query heads of ", c.resolved_head_dim(), " over ", c.num_key_value_heads,
             c.num_key_value_heads == 1 ? " kv head" : " kv heads", ", SwiGLU ",
             c.intermediate_size);
}

template <class T, class Model>
int run(const Settings& s, const std::string& out, const std::string& resume, Clock::time_point start) {
  const Device device = s.device == "cuda" ? Device::cuda(0) : Device::cpu();
  const bool big = example::gpu_sized(s.config);

  // Corpus and tokenizer.
  const data::TaskMix mix = example::task_mix(static_cast<int>(s.max_digits), s.countdown_fraction);
  const example::Corpus corpus = example::make_corpus(s.seed, static_cast<std::size_t>(s.docs),
                                                      static_cast<std::size_t>(std::max<std::int64_t>(s.docs / 20, 200)), mix,
                                                      s.direct_fraction);
  const auto t_corpus = Clock::now();
  data::Tokenizer tok;
  std::string tokenizer_source;
  if (!s.tokenizer.empty()) {
    tok = data::Tokenizer::load(s.tokenizer);
    tokenizer_source = "loaded from " + s.tokenizer;
  } else if (!resume.empty() && std::filesystem::exists(resume + "/tokenizer.json")) {
    tok = data::Tokenizer::load(resume + "/tokenizer.json");
    tokenizer_source = "loaded from " + resume + "/tokenizer.json";
  } else {
    tok = example::train_tokenizer(corpus, s.vocab, big ? 4000 : 1500);
    tokenizer_source = "trained";
  }
  const auto train_stream = example::pack(tok, corpus.train);
  const auto validation_stream = example::pack(tok, corpus.validation);
  const auto t_data = Clock::now();
  std::printf("corpus: %zu train / %zu validation documents, %.2f s; tokenizer (%s): %lld tokens, %.2f s; "
              "%zu train tokens (%.2f bytes/token), %zu validation tokens\n",
              corpus.train.size(), corpus.validation.size(), std::chrono::duration<double>(t_corpus - start).count(),
              tokenizer_source.c_str(), static_cast<long long>(tok.vocab_size()),
              std::chrono::duration<double>(t_data - t_corpus).count(), train_stream.size(),
              [&] {
                std::size_t bytes = 0;
                for (const auto& d : corpus.train) bytes += d.size();
                return static_cast<double>(bytes) / static_cast<double>(train_stream.size());
              }(),
              validation_stream.size());
  if (!out.empty()) {
    std::filesystem::create_directories(out);
    tok.save(out + "/tokenizer.json");
    save_settings(out + "/run.json", s);
  }

  // Model.
  const std::int64_t vocab = example::padded_vocab(tok.vocab_size());
  typename Model::Config config = model_config<Model>(s.config, vocab);
  config.bos_token_id = tok.bos_id().value();
  config.eos_token_id = tok.eos_id().value();
  config.pad_token_id = tok.pad_id();
  Generator init{s.seed, 0};
  Model model(config, init);
  model.to(device);
  constexpr bool moe = std::is_same_v<typename Model::Config, nn::DeepseekV3Config>;
  std::string precision_note;
  if (s.fp8) {
    const std::vector<std::string> fp8_linears =
        nn::use_fp8_linears(model, fp8_options(s.fp8_gemms), fp8_keep(s.fp8_keep));
    // The fused MoE path's weight gradient of the routed experts stays in T unless --fp8-gemms
    // lists expert-wgrad (nn/fp8_linear.hpp: grouped_fp8_wgrad).
    bool fused_experts = false;
    if constexpr (moe) fused_experts = nn::use_fused_moe<T>(device, config.hidden_size, config.moe_intermediate_size);
    precision_note = str("; FP8 GEMMs in ", fp8_linears.size(), " linears",
                         s.fp8_gemms == "forward,dgrad,wgrad" ? "" : " (products in FP8: " + s.fp8_gemms + ")",
                         fused_experts && !fp8_options(s.fp8_gemms).grouped_fp8_wgrad
                             ? str(" (routed experts' weight gradients in ", dtype_name<T>, ")")
                             : "");
  }

  train::TrainerOptions o;
  o.steps = s.steps;
  o.grad_accum = s.accum;
  o.max_grad_norm = s.clip;
  o.schedule = {.peak_lr = s.lr, .min_lr = s.lr / 10, .warmup_steps = s.warmup, .total_steps = s.steps};
  o.adamw.weight_decay = s.weight_decay;
  o.log_every = s.log_every;
  o.eval_every = s.eval_every;
  o.eval_batches = s.eval_batches;
  o.checkpoint_every = s.checkpoint_every;
  o.checkpoint_dir = out.empty() ? "" : out + "/checkpoint";
  o.data_seed = s.seed;
  o.time_phases = s.time_phases;
  std::string peak_note = "no MFU on the CPU";
  if (device.is_cuda()) {
#ifdef KILN_EXAMPLE_CUDA
    cuda::set_allow_tf32(s.tf32);
#endif
    const std::string name = gpu_name();
    const std::string compute = std::is_same_v<T, float> ? (s.tf32 ? "tf32" : "fp32") : "bf16";
    o.peak_flops = s.peak_tflops > 0 ? s.peak_tflops * 1e12 : train::peak_flops(name, compute);
    peak_note = o.peak_flops > 0 ? str("MFU against ", o.peak_flops / 1e12, " TFLOP/s (", name, ", ", compute, " dense)")
                                 : str("unknown peak for \"", name, "\": pass --peak TFLOPS for MFU");
  }
  std::printf("model: %s config, %s on %s, %s, vocab %lld, %lld parameters%s; %s\n", s.config.c_str(), dtype_name<T>,
              device.name().c_str(), describe(config).c_str(), static_cast<long long>(vocab),
              static_cast<long long>(model.num_parameters()), precision_note.c_str(), peak_note.c_str());

  const std::uint64_t batch_seed = s.seed * 1000003ull + 17;
  train::Trainer trainer(model, o, example::train_batches(train_stream, s.batch, s.seq, batch_seed),
                         example::validation_batches(validation_stream, s.batch, s.seq));
  if (!resume.empty()) trainer.resume(resume + "/checkpoint");
  const auto t_train = Clock::now();
  trainer.run();
  const double train_seconds = std::chrono::duration<double>(Clock::now() - t_train).count();

  // Summary.
  const auto& h = trainer.history();
  double tokens = 0, step_seconds = 0, flops = 0;
  for (const auto& r : h) tokens += static_cast<double>(r.tokens), step_seconds += r.seconds, flops += r.flops;
  const train::EvalRecord e = trainer.eval_history().empty() ? trainer.evaluate() : trainer.eval_history().back();
  std::printf("done: %lld steps in %.1f s of training (%.0f tok/s, %.3g GFLOP/s over the steps run here)",
              static_cast<long long>(trainer.steps_done()), train_seconds, step_seconds > 0 ? tokens / step_seconds : 0.0,
              step_seconds > 0 ? flops / step_seconds / 1e9 : 0.0);
  if (o.peak_flops > 0 && step_seconds > 0) std::printf(", MFU %.1f%%", 100.0 * flops / step_seconds / o.peak_flops);
  std::printf("\nfinal: ");
  if (!h.empty()) std::printf("train loss %.4f (main %.4f), ", h.back().loss, h.back().parts.front().second);
  std::printf("validation loss %.4f (next-token cross-entropy on held-out problems)", e.loss);
  if (moe) std::printf(", val MaxVio %.3f (max %.3f)", e.max_vio_mean, e.max_vio_max);
  std::printf("\n");
  if (s.fp8_probe)
    example::run_fp8_probe<T>(model, trainer, trainer.steps_done() * s.accum, s.fp8, fp8_options(s.fp8_gemms),
                              fp8_keep(s.fp8_keep));
  if (s.fp8) {
    // The same weights through the model's own precision: what FP8 training learned, apart from
    // the FP8 forward's own rounding.
    nn::clear_fp8_linears(model);
    std::printf("final: validation loss %.4f with the FP8-trained weights in %s (no FP8 GEMMs)\n",
                trainer.evaluate().loss, dtype_name<T>);
    nn::use_fp8_linears(model, fp8_options(s.fp8_gemms), fp8_keep(s.fp8_keep));
  }

  // A few greedy completions of test problems, checked by the task verifier.
  Generator test_gen{s.seed + 99, 0};
  double format = 0, accuracy = 0;
  std::vector<data::Problem> problems;
  std::vector<std::string> prompts;
  for (std::int64_t i = 0; i < s.samples; ++i) {
    problems.push_back(data::sample(mix, test_gen, data::Split::test));
    prompts.push_back(data::prompt(problems.back()));
  }
  const std::vector<std::string> completions = greedy_completions(model, tok, prompts, 160);
  for (std::int64_t i = 0; i < s.samples; ++i) {
    const data::Problem& p = problems[static_cast<std::size_t>(i)];
    const std::string& prompt = prompts[static_cast<std::size_t>(i)];
    const std::string& completion = completions[static_cast<std::size_t>(i)];
    const data::Reward r = data::verify(p, completion);
    format += r.format;
    accuracy += r.accuracy;
    std::printf("--- sample %lld: %s%s\n    [%s]\n", static_cast<long long>(i + 1), prompt.c_str(), completion.c_str(),
                r.reason.c_str());
  }
  std::printf("total wall time %.1f s\n", std::chrono::duration<double>(Clock::now() - start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const auto start = Clock::now();
  std::string out, resume;
  const Settings s = parse(argc, argv, out, resume);
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(s.threads));
#endif
  if (s.device == "cuda") {
#ifndef KILN_EXAMPLE_CUDA
    throw Error("--device cuda needs a build with the CUDA backend (cmake -DKILN_CUDA=ON)");
#endif
  }
  nn::attention_path() = s.attention == "fused" ? nn::AttentionPath::fused : nn::AttentionPath::composed;
  nn::moe_dispatch_path() = s.moe == "fused"      ? nn::MoEDispatch::fused
                            : s.moe == "composed" ? nn::MoEDispatch::composed
                                                  : nn::MoEDispatch::automatic;
  const bool llama = example::is_llama_config(s.config);
  if (s.dtype == "bf16")
    return llama ? run<bf16, nn::LlamaForCausalLM<bf16>>(s, out, resume, start)
                 : run<bf16, nn::DeepseekV3ForCausalLM<bf16>>(s, out, resume, start);
  return llama ? run<float, nn::LlamaForCausalLM<float>>(s, out, resume, start)
               : run<float, nn::DeepseekV3ForCausalLM<float>>(s, out, resume, start);
} catch (const std::exception& e) {
  std::fprintf(stderr, "pretrain: %s\n", e.what());
  return 1;
}
