// A training loop for kiln's causal language models (nn::DeepseekV3ForCausalLM, nn::LlamaForCausalLM).
//
// One optimizer step:
//   1. gradient accumulation: for each of `grad_accum` micro-batches, forward, loss × w_k,
//      backward (gradients add up in the parameters' .grad()). w_k = n_k / Σ n, n_k the targets
//      micro-batch k counts (not ignore_index): each loss is a mean over its own targets, so the
//      sum is the mean over all of the step's targets, and k micro-batches give the gradient of
//      the one batch they make up even when they count different numbers of targets (SFT's
//      prompt masking, packed rows); pretraining's micro-batches all count B·S, w_k = 1/k. The
//      loss is compute_loss (next-token CE; DeepSeek-V3 adds MTP and balance) or a LossFn;
//   2. global-norm clipping (optim/clip.hpp); a non-finite norm skips the update (counted);
//   3. AdamW (optim/adamw.hpp) at the rate of the warmup + cosine schedule (optim/schedule.hpp)
//      for this step;
//   4. MoE models: the aux-loss-free bias update over the step's expert counts
//      (DeepseekV3ForCausalLM::update_balance, which also resets the counts).
// On a GPU the host reads at one point of the step, after the backward and the gradient norm are
// queued (the losses, the norm, the expert loads), so it can queue the whole forward and backward
// ahead of the GPU; with the built-in loss it checks the batch's token ids itself, so that the
// embedding's and cross-entropy's checks, each a read, are skipped (StepPhases shows the waits).
//
// Data. The trainer asks a BatchFn for micro-batch number i (0, 1, 2, ... over the whole run) and
// a validation BatchFn for batches 0 .. eval_batches-1. A BatchFn must be a pure function of its
// index (derive any randomness from a seed and the index): then the data position, one integer,
// is all a checkpoint needs to resume the stream.
//
// Determinism and resuming. Checkpoints (io/checkpoint.hpp) hold the weights and MoE biases, AdamW's
// moments and step count, and trainer.json with the step, the data position and the schedule; they
// are written after the bias update, when no expert counts are pending. The schedule is a pure
// function of the step. So on the CPU a run resumed from the checkpoint of step k reproduces the
// uninterrupted run's losses and weights bit for bit, given the same thread count (Eigen's matrix
// products block K by thread count, so their last bits can change with it).
//
// Progress line (every log_every steps):
//   step 200/1000 | loss 2.3456 (main 2.1 mtp 0.24 bal 0) | lr 9.8e-04 | grad 0.81 | 45123 tok/s
//     | 12.3 GFLOP/s | MFU 41.2% | MaxVio 0.21 (max 0.35)
// tokens/s and FLOP/s are over the steps since the previous line (evaluation and checkpoint time
// excluded); MFU appears when a peak is known (TrainerOptions::peak_flops); MaxVio for MoE models
// is the step's max_i load_i / mean load − 1, the mean over MoE layers and the worst layer.
//
// FLOPs (for FLOP/s and MFU), per trained token, the usual estimate of Kaplan et al. (2020) and
// PaLM (Chowdhery et al. 2022, appendix B):
//   6 · N_active  +  6 · L_attn · S · d_attn
// N_active: parameters a token's forward multiplies with (the embedding lookup excluded, the output
// head counted once per head application: 1 + D with D MTP depths; routed expert weights times
// K / N_r; the MTP blocks counted when they run). The factor 6 = 2 (multiply-add) × 3 (forward,
// and backward for activations and for weights). The attention term counts the score and value
// products over the full S×S square, d_attn = heads · (qk head dim + v head dim) per layer,
// L_attn attention layers (MTP blocks included): the convention of PaLM, llm.c and nanoGPT, so
// figures compare with theirs; kiln's attention computes the full square (masked), so this is the
// work it does. MoE routing, norms, softmax and elementwise work are not counted.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/core/device_readback.hpp"
#include "kiln/io/checkpoint.hpp"
#include "kiln/nn/deepseek_v3.hpp"
#include "kiln/nn/llama.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/cross_entropy.hpp"
#include "kiln/optim/adamw.hpp"
#include "kiln/optim/clip.hpp"
#include "kiln/optim/schedule.hpp"

namespace kiln::train {

// Token ids and next-token targets, both [B, S] (targets may hold ignore_index = -100). On any
// device: the trainer moves them to the model's. cu_seqlens (a CPU tensor [n + 1]) makes the batch
// one packed row (B = 1) of n sequences: attention stays inside each, positions restart in each
// (nn/attention.hpp; distill/sft.hpp builds such batches).
struct Batch {
  Tensor<std::int64_t> ids, targets;
  // Undefined: every row is one sequence at positions 0..S-1.
  Tensor<std::int64_t> cu_seqlens = Tensor<std::int64_t>();
};

// Micro-batch `index` -> the batch (a pure function of the index).
using BatchFn = std::function<Batch(std::int64_t index)>;

// A forward's loss to back-propagate and its named parts (the first named "main": next-token CE).
template <class T>
struct LossParts {
  Tensor<T> loss;
  std::vector<std::pair<std::string, Tensor<T>>> parts;
};

// The rope positions of a batch: restarting per sequence in a packed row, else 0..S-1.
inline Tensor<std::int64_t> batch_positions(const Batch& b) {
  return b.cu_seqlens.defined() ? nn::packed_positions(b.cu_seqlens) : nn::positions_from(0, b.ids.size(1));
}

// The logits of a batch [B, S, vocab], packed or not.
template <class Model>
auto batch_logits(Model& model, const Batch& b) {
  return model.forward(b.ids, batch_positions(b), b.cu_seqlens);
}

template <class T>
LossParts<T> compute_loss(nn::DeepseekV3ForCausalLM<T>& model, const Batch& b) {
  nn::DeepseekV3Output<T> out = model.forward_with_loss(b.ids, b.targets, -100, b.cu_seqlens);
  return {out.loss, {{"main", out.main_loss}, {"mtp", out.mtp_loss}, {"bal", out.balance_loss}}};
}

template <class T>
LossParts<T> compute_loss(nn::LlamaForCausalLM<T>& model, const Batch& b) {
  const Tensor<T> loss = cross_entropy(batch_logits(model, b), b.targets);
  return {loss, {{"main", loss}}};
}

template <class M>
struct scalar_of;
template <template <class> class M, class T>
struct scalar_of<M<T>> {
  using type = T;
};

// The loss a Trainer minimises: by default compute_loss (next-token CE, plus MTP and balance for
// DeepSeek-V3); the distillation objectives (distill/objectives.hpp) plug in here. parts[0] is
// what validation reports as the loss ("main": next-token CE for every built-in objective).
template <class Model>
using LossFn = std::function<LossParts<typename scalar_of<Model>::type>(Model&, const Batch&)>;

// ---- FLOPs ---------------------------------------------------------------------------------------

// The per-token training FLOPs of a model (see the file comment): 6·active_params + 6·L·S·width.
struct FlopsModel {
  double active_params = 0.0;         // N_active
  std::int64_t attention_layers = 0;  // L_attn
  double attention_width = 0.0;       // d_attn = heads · (qk head dim + v head dim)

  double per_token(std::int64_t seq_len) const {
    return 6.0 * active_params +
           6.0 * static_cast<double>(attention_layers) * static_cast<double>(seq_len) * attention_width;
  }
};

template <class T>
FlopsModel flops_model(const nn::DeepseekV3ForCausalLM<T>& model) {
  const nn::DeepseekV3Config& c = model.model.config;
  // The MTP modules run only with a nonzero loss weight (forward_with_loss).
  const std::int64_t depths = c.mtp_loss_weight != 0.0 ? static_cast<std::int64_t>(model.model.mtp_layers.size()) : 0;
  // Each token runs K of the experts; expert parallel, a rank holds L of the n_routed_experts and
  // runs on average K routes per token of its own (the others' tokens come to its experts).
  const auto moe = model.moe_layers();
  const std::int64_t held = moe.empty() ? c.n_routed_experts : moe.front().second->local_experts();
  const double expert_fraction =
      held > 0 ? static_cast<double>(c.num_experts_per_tok) / static_cast<double>(held) : 0.0;
  FlopsModel f;
  for (const auto& [name, p] : model.named_parameters()) {
    const double n = static_cast<double>(p.numel());
    if (name == "model.embed_tokens.weight") {
      if (c.tie_word_embeddings) f.active_params += n * static_cast<double>(1 + depths);
    } else if (name == "lm_head.weight") {
      f.active_params += n * static_cast<double>(1 + depths);
    } else {
      // model.layers.{i}: a main layer for i < num_hidden_layers, else an MTP block.
      const std::string prefix = "model.layers.";
      if (name.rfind(prefix, 0) == 0 && depths == 0 &&
          std::stoll(name.substr(prefix.size())) >= c.num_hidden_layers)
        continue;
      f.active_params += name.find(".mlp.experts.") != std::string::npos ? n * expert_fraction : n;
    }
  }
  f.attention_layers = c.num_hidden_layers + depths;
  f.attention_width = static_cast<double>(c.num_attention_heads) *
                      static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim);
  return f;
}

template <class T>
FlopsModel flops_model(const nn::LlamaForCausalLM<T>& model) {
  const nn::LlamaConfig& c = model.model.config;
  FlopsModel f;
  for (const auto& [name, p] : model.named_parameters())
    if (name != "model.embed_tokens.weight" || c.tie_word_embeddings) f.active_params += static_cast<double>(p.numel());
  f.attention_layers = c.num_hidden_layers;
  f.attention_width = static_cast<double>(c.num_attention_heads) * 2.0 * static_cast<double>(c.resolved_head_dim());
  return f;
}

// Dense (no structured sparsity) tensor-core peak FLOP/s of a GPU by its CUDA device name
// (cudaDeviceProp::name) for a compute type: "bf16" (also fp16), "tf32", "fp32" (plain FP32
// products: kiln's float matmul unless TF32 is allowed) or "fp64". 0 when the card is unknown.
// From NVIDIA's datasheets (H100: the SXM5 part is named "H100 80GB HBM3").
inline double peak_flops(const std::string& device_name, const std::string& compute) {
  struct Row {
    const char* match;              // substring of the device name (the first matching row wins)
    double bf16, tf32, fp32, fp64;  // TFLOP/s
  };
  static const Row rows[] = {
      {"H100 PCIe", 756.5, 378.0, 51.2, 51.2},
      {"H100 NVL", 835.5, 417.5, 60.0, 60.0},
      {"H200 NVL", 835.5, 417.5, 60.0, 60.0},
      {"H100", 989.4, 494.7, 66.9, 66.9},  // SXM5 ("NVIDIA H100 80GB HBM3")
      {"H200", 989.4, 494.7, 66.9, 66.9},
      {"A100", 312.0, 156.0, 19.5, 19.5},
  };
  for (const Row& r : rows) {
    if (device_name.find(r.match) == std::string::npos) continue;
    double t = 0.0;
    if (compute == "bf16" || compute == "fp16") t = r.bf16;
    else if (compute == "tf32") t = r.tf32;
    else if (compute == "fp32") t = r.fp32;
    else if (compute == "fp64") t = r.fp64;
    else fail("peak_flops", "unknown compute type \"", compute, "\" (bf16, fp16, tf32, fp32, fp64)");
    return t * 1e12;
  }
  return 0.0;
}

// ---- the trainer --------------------------------------------------------------------------------

struct TrainerOptions {
  std::int64_t steps = 1000;      // optimizer steps of the whole run
  std::int64_t grad_accum = 1;    // micro-batches per step
  double max_grad_norm = 1.0;     // global-norm clipping threshold; <= 0: measure only
  optim::CosineSchedule schedule;  // total_steps 0: set to `steps`
  optim::AdamWOptions adamw;      // its lr is replaced by the schedule's at every step
  std::int64_t log_every = 10;    // progress line every N steps (0: none); also after step 1 and the last
  std::int64_t eval_every = 0;    // validation every N steps (0: only at the end, if a validation set is given)
  std::int64_t eval_batches = 4;
  std::int64_t checkpoint_every = 0;  // training checkpoint every N steps into checkpoint_dir (0: only at the end)
  std::string checkpoint_dir;         // empty: no checkpoints
  std::uint64_t data_seed = 0;        // recorded in checkpoints (the BatchFn's seed, for the record)
  double peak_flops = 0.0;            // the device's dense peak FLOP/s for MFU (0: no MFU)
  bool time_phases = false;           // each progress line is followed by where the steps' wall time
                                      // went on the host (StepPhases), averaged over its interval
  std::FILE* log = stdout;            // progress output (nullptr: silent)
};

// Where one step's wall time went, as the host sees it (seconds). On a GPU the host only enqueues
// kernels, and waits once a step, at its reads: the losses, the gradient norm (for clipping and the
// skip of a non-finite step) and the expert loads (MaxVio), read together after the backward and
// the norm are queued. So `forward_backward` is the host's cost of enqueueing them (close to the
// GPU's time when the host is what limits the step), and `reads` is how long the GPU still had to
// run after that. The phases add up to StepRecord::seconds (but for the microseconds of a call).
struct StepPhases {
  double data = 0.0;              // the micro-batches made (BatchFn), checked and moved to the device
  double forward_backward = 0.0;  // the losses and their backward, enqueued
  double reads = 0.0;             // the gradient norm queued; losses, norm and loads read (waits)
  double clip = 0.0;              // the gradients scaled to the clipped norm
  double optimizer = 0.0;         // the AdamW update
  double balance = 0.0;           // the routing bias update
  double rest = 0.0;              // gradients released, bookkeeping
  // How often the host waited for the device's queue (core's host_wait_count: reads back, large
  // uploads): in the whole step, and in its forward+backward (where a wait stalls the enqueueing).
  std::int64_t host_waits = 0, forward_backward_waits = 0;

  StepPhases& operator+=(const StepPhases& o) {
    data += o.data, forward_backward += o.forward_backward, reads += o.reads, clip += o.clip;
    optimizer += o.optimizer, balance += o.balance, rest += o.rest;
    host_waits += o.host_waits, forward_backward_waits += o.forward_backward_waits;
    return *this;
  }
  double total() const { return data + forward_backward + reads + clip + optimizer + balance + rest; }
};

// What one optimizer step did.
struct StepRecord {
  std::int64_t step = 0;  // steps done after this one (1-based)
  double loss = 0.0;      // mean over the micro-batches
  std::vector<std::pair<std::string, double>> parts;
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping
  bool skipped = false;    // non-finite gradient norm: no update
  std::int64_t tokens = 0;
  double flops = 0.0;
  double seconds = 0.0;
  double max_vio_mean = 0.0, max_vio_max = 0.0;  // MoE layers' MaxVio over the step's batch (0 without MoE)
  StepPhases phases;  // where `seconds` went (TrainerOptions::time_phases prints them)
};

struct EvalRecord {
  std::int64_t step = 0;
  double loss = 0.0;  // the "main" part: next-token cross-entropy
  std::vector<std::pair<std::string, double>> parts;
  // MaxVio of the expert load over the whole validation set (MaxVio_global), per MoE layer.
  std::vector<double> max_vio;
  double max_vio_mean = 0.0, max_vio_max = 0.0;
};

namespace detail {

inline std::string format(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return buf;
}

inline std::string format_parts(const std::vector<std::pair<std::string, double>>& parts) {
  if (parts.size() <= 1) return "";
  std::string s = " (";
  for (std::size_t i = 0; i < parts.size(); ++i)
    s += format("%s%s %.4g", i ? " " : "", parts[i].first.c_str(), parts[i].second);
  return s + ")";
}

}  // namespace detail

template <class Model>
class Trainer {
 public:
  using T = typename scalar_of<Model>::type;
  using Clock = std::chrono::steady_clock;

  // A step's wall time cut into phases: lap(phase) adds the seconds since the last lap (or since
  // the clock was made) to `phase` and returns the host's waits for the device in between.
  struct PhaseClock {
    Clock::time_point mark = Clock::now();
    std::int64_t waits = host_wait_count().load(std::memory_order_relaxed);
    std::int64_t lap(double& phase) {
      const Clock::time_point now = Clock::now();
      phase += std::chrono::duration<double>(now - mark).count();
      mark = now;
      const std::int64_t total = host_wait_count().load(std::memory_order_relaxed), since = total - waits;
      waits = total;
      return since;
    }
  };

  // `model` must outlive the trainer; the optimizer is built over model.parameters(). loss_fn
  // replaces compute_loss (for training and validation).
  Trainer(Model& model, TrainerOptions options, BatchFn train_data, BatchFn validation_data = {},
          LossFn<Model> loss_fn = {})
      : model_(model),
        options_(std::move(options)),
        train_data_(std::move(train_data)),
        validation_data_(std::move(validation_data)),
        loss_fn_(std::move(loss_fn)),
        optimizer_(model.parameters(), options_.adamw),
        flops_(flops_model(model)) {
    check(options_.steps >= 0 && options_.grad_accum >= 1, "Trainer", "steps (", options_.steps,
          ") must not be negative and grad_accum (", options_.grad_accum, ") must be at least 1");
    check(static_cast<bool>(train_data_), "Trainer", "needs a training BatchFn");
    check(options_.log_every >= 0 && options_.eval_every >= 0 && options_.checkpoint_every >= 0 &&
              options_.eval_batches >= 0,
          "Trainer", "log_every, eval_every, checkpoint_every and eval_batches must not be negative");
    if (options_.schedule.total_steps == 0) options_.schedule.total_steps = options_.steps;
    options_.schedule.validate();
    device_ = model.parameters().empty() ? Device::cpu() : model.parameters().front().device();
  }

  // ---- running ----

  // Trains until `steps` optimizer steps are done (from wherever a resume left off), with progress,
  // validation and checkpoints as configured; a final validation and checkpoint at the end.
  void run() { run_until(options_.steps); }

  // The same, stopping after step `last_step` (<= steps).
  void run_until(std::int64_t last_step) {
    check(last_step <= options_.steps, "Trainer", "run_until(", last_step, ") goes past steps = ", options_.steps);
    if (!header_printed_ && step_ < last_step) print_header();
    std::int64_t interval_tokens = 0, interval_steps = 0;
    double interval_seconds = 0.0, interval_flops = 0.0;
    StepPhases interval_phases;
    while (step_ < last_step) {
      const StepRecord r = step();
      interval_tokens += r.tokens;
      interval_seconds += r.seconds;
      interval_flops += r.flops;
      interval_phases += r.phases;
      ++interval_steps;
      const bool last = step_ == last_step;
      if (options_.log_every > 0 && (step_ % options_.log_every == 0 || step_ == 1 || last)) {
        print_step(r, interval_tokens, interval_seconds, interval_flops);
        if (options_.time_phases) print_phases(interval_phases, interval_steps);
        interval_tokens = interval_steps = 0;
        interval_seconds = interval_flops = 0.0;
        interval_phases = StepPhases{};
      }
      const bool end = step_ == options_.steps;
      if (validation_data_ && options_.eval_batches > 0 &&
          ((options_.eval_every > 0 && step_ % options_.eval_every == 0) || end))
        print_eval(evaluate());
      if (!options_.checkpoint_dir.empty() &&
          ((options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) || end)) {
        save_checkpoint(options_.checkpoint_dir);
        log(detail::format("checkpoint step %lld -> %s\n", static_cast<long long>(step_),
                           options_.checkpoint_dir.c_str()));
      }
    }
  }

  // The gradients of the `grad_accum` micro-batches starting at micro-batch `first` (weights
  // unchanged, gradients replaced): the mean loss and its parts, tokens and FLOPs.
  StepRecord compute_gradients(std::int64_t first) {
    PhaseClock clock;
    StepRecord r;
    read_losses(queue_gradients(first, r, clock), r);
    clock.lap(r.phases.reads);
    return r;
  }

  // One optimizer step on the next micro-batches.
  StepRecord step() {
    check(step_ < options_.steps, "Trainer", "all ", options_.steps, " steps are done");
    PhaseClock clock;
    const auto start = clock.mark;
    const std::int64_t waits_before = clock.waits;
    StepRecord r;
    const QueuedLosses losses = queue_gradients(data_position_, r, clock);
    data_position_ += options_.grad_accum;

    // The step's reads, together after its last launch: the first waits for the GPU, the others
    // find their values computed.
    const optim::GradientSet<T> grads(model_.parameters(), "Trainer");
    const Tensor<double> squares = grads.queue_sum_squares();
    read_losses(losses, r);
    r.grad_norm = std::sqrt(squares.item());
    if constexpr (requires { model_.load_stats(); }) {
      const auto loads = model_.load_stats();
      for (const auto& l : loads) {
        r.max_vio_mean += l.max_violation() / static_cast<double>(loads.size());
        r.max_vio_max = std::max(r.max_vio_max, l.max_violation());
      }
    }
    clock.lap(r.phases.reads);

    // What optim::clip_grad_norm does, with the norm read above.
    const double factor = options_.max_grad_norm > 0.0 ? optim::clip_factor(r.grad_norm, options_.max_grad_norm) : 1.0;
    if (factor != 1.0) grads.scale(factor);
    clock.lap(r.phases.clip);
    r.lr = options_.schedule(step_);
    r.skipped = !std::isfinite(r.grad_norm);
    if (!r.skipped) {
      optimizer_.set_lr(r.lr);
      optimizer_.step();
    } else {
      ++skipped_steps_;
    }
    clock.lap(r.phases.optimizer);
    if constexpr (requires { model_.update_balance(); }) model_.update_balance();
    clock.lap(r.phases.balance);
    model_.zero_grad();
    ++step_;
    tokens_seen_ += r.tokens;
    r.step = step_;
    last_lr_ = r.lr;
    clock.lap(r.phases.rest);
    r.seconds = std::chrono::duration<double>(clock.mark - start).count();
    r.phases.host_waits = clock.waits - waits_before;
    history_.push_back(r);
    return r;
  }

  // The validation loss (over eval_batches batches, each weighted by its share of their counted
  // targets as in training; no gradients) and the expert load over all of them.
  EvalRecord evaluate() {
    check(static_cast<bool>(validation_data_), "Trainer::evaluate", "no validation BatchFn was given");
    NoGradGuard no_grad;
    EvalRecord e;
    e.step = step_;
    std::vector<nn::ExpertLoad> loads;
    std::vector<Batch> batches;
    for (std::int64_t i = 0; i < options_.eval_batches; ++i) batches.push_back(validation_data_(i));
    const std::vector<double> w = target_weights(batches);
    for (std::size_t i = 0; i < batches.size(); ++i) {
      const LossParts<T> l = loss(on_device(batches[i]));
      if (e.parts.empty())
        for (const auto& [name, t] : l.parts) e.parts.emplace_back(name, 0.0);
      for (std::size_t k = 0; k < l.parts.size(); ++k)
        e.parts[k].second += static_cast<double>(l.parts[k].second.item()) * w[i];
      if constexpr (requires { model_.last_load_stats(); }) {
        const auto stats = model_.last_load_stats();
        if (loads.empty())
          for (const auto& s : stats) loads.emplace_back(s.load.experts());
        for (std::size_t k = 0; k < stats.size(); ++k) loads[k].add(stats[k].load);
      }
    }
    e.loss = e.parts.empty() ? 0.0 : e.parts.front().second;
    for (const auto& l : loads) {
      e.max_vio.push_back(l.max_violation());
      e.max_vio_mean += l.max_violation() / static_cast<double>(loads.size());
      e.max_vio_max = std::max(e.max_vio_max, l.max_violation());
    }
    eval_history_.push_back(e);
    return e;
  }

  // ---- checkpoints ----

  // Writes a training checkpoint of the current state into `dir` (atomically, replacing it).
  void save_checkpoint(const std::string& dir) const {
    io::TrainerState s;
    s.step = step_;
    s.rng = Generator{options_.data_seed, static_cast<std::uint64_t>(data_position_)};
    s.data_position = data_position_;
    s.lr = last_lr_;
    s.lr_schedule = schedule_json();
    s.extra = {{"grad_accum", options_.grad_accum},
               {"tokens_seen", tokens_seen_},
               {"skipped_steps", skipped_steps_},
               {"max_grad_norm", options_.max_grad_norm}};
    io::save_training_checkpoint(dir, model_, model_.model.config, optimizer_, s);
  }

  // Restores weights, MoE biases, optimizer state, step and data position from a checkpoint of
  // save_checkpoint. Settings that differ from the checkpoint's (schedule, accumulation) are
  // reported on the log: the run continues with the current options, but then not bit for bit.
  void resume(const std::string& dir) {
    const io::TrainerState s = io::load_training_checkpoint(dir, model_, model_.model.config, optimizer_);
    check(s.step <= options_.steps, "Trainer::resume", dir, " is at step ", s.step, ", past steps = ", options_.steps);
    step_ = s.step;
    data_position_ = s.data_position;
    last_lr_ = s.lr;
    // trainer.json is a file like any other: a counter of the wrong type is an error, not an
    // nlohmann exception.
    auto counter = [&](const char* key) {
      const io::json& v = s.extra[key];
      check(v.is_number_integer() && v.get<std::int64_t>() >= 0, "Trainer::resume", dir, ": extra.", key,
            " must be a non-negative integer, got ", io::describe_json(v));
      return v.get<std::int64_t>();
    };
    if (s.extra.contains("tokens_seen")) tokens_seen_ = counter("tokens_seen");
    if (s.extra.contains("skipped_steps")) skipped_steps_ = counter("skipped_steps");
    if (s.lr_schedule != schedule_json())
      log("note: the checkpoint's lr schedule " + io::dump_json(s.lr_schedule, "Trainer::resume", dir) +
          " differs from this run's " + schedule_json().dump() + "\n");
    if (s.extra.contains("grad_accum") && s.extra["grad_accum"] != options_.grad_accum)
      log(detail::format("note: the checkpoint used grad_accum %s, this run %lld\n",
                         io::describe_json(s.extra["grad_accum"]).c_str(), static_cast<long long>(options_.grad_accum)));
    if (s.rng.seed != options_.data_seed)
      log(detail::format("note: the checkpoint's data seed %llu differs from this run's %llu\n",
                         static_cast<unsigned long long>(s.rng.seed),
                         static_cast<unsigned long long>(options_.data_seed)));
    // No expert counts carry over (the checkpoint was written after a bias update).
    if constexpr (requires { model_.update_balance(0.0); }) model_.update_balance(0.0);
    log(detail::format("resumed from %s at step %lld (micro-batch %lld)\n", dir.c_str(), static_cast<long long>(step_),
                       static_cast<long long>(data_position_)));
  }

  // ---- state ----

  std::int64_t steps_done() const { return step_; }
  std::int64_t data_position() const { return data_position_; }
  std::int64_t tokens_seen() const { return tokens_seen_; }
  std::int64_t skipped_steps() const { return skipped_steps_; }
  const std::vector<StepRecord>& history() const { return history_; }
  const std::vector<EvalRecord>& eval_history() const { return eval_history_; }
  const TrainerOptions& options() const { return options_; }
  optim::AdamW<T>& optimizer() { return optimizer_; }
  const FlopsModel& flops() const { return flops_; }

  void log(const std::string& line) const {
    if (!options_.log) return;
    std::fputs(line.c_str(), options_.log);
    std::fflush(options_.log);
  }

 private:
  // A step's weighted losses, summed on the model's device and read after its last launch.
  struct QueuedLosses {
    Tensor<compute_t<T>> loss;  // losses summed in float (double for double models)
    std::vector<std::pair<std::string, Tensor<compute_t<T>>>> parts;
  };

  // Queues the gradients of the `grad_accum` micro-batches starting at micro-batch `first` (weights
  // unchanged, gradients replaced) and returns their losses, weighted as the gradients are; adds
  // the tokens, FLOPs and phases to r.
  QueuedLosses queue_gradients(std::int64_t first, StepRecord& r, PhaseClock& clock) {
    using A = compute_t<T>;
    model_.zero_grad();
    clock.lap(r.phases.rest);
    QueuedLosses sums;
    std::vector<Batch> batches;  // as the BatchFn made them (usually on the host, where they are counted)
    for (std::int64_t k = 0; k < options_.grad_accum; ++k) batches.push_back(train_data_(first + k));
    const std::vector<double> w = target_weights(batches);
    clock.lap(r.phases.data);
    for (std::size_t k = 0; k < batches.size(); ++k) {
      // Token ids checked here skip the device ops' own checks, each a read that would stop the
      // host from queueing the rest of the step (core/device_readback.hpp).
      std::optional<DeviceReadbackGuard> checked;
      if (tokens_checked_on_host(batches[k], first + static_cast<std::int64_t>(k))) checked.emplace();
      const Batch b = on_device(batches[k]);
      clock.lap(r.phases.data);
      const LossParts<T> l = loss(b);
      (w[k] == 1.0 ? l.loss : mul(l.loss, w[k])).backward();
      NoGradGuard no_grad;
      auto accumulate = [&](Tensor<A>& sum, const Tensor<T>& x) {
        const Tensor<A> v = mul(cast<A>(x.detach()), w[k]);
        sum = sum.defined() ? add(sum, v) : v;
      };
      accumulate(sums.loss, l.loss);
      if (sums.parts.empty())
        for (const auto& [name, t] : l.parts) sums.parts.emplace_back(name, Tensor<A>());
      for (std::size_t i = 0; i < l.parts.size(); ++i) accumulate(sums.parts[i].second, l.parts[i].second);
      r.tokens += b.ids.numel();
      r.flops += static_cast<double>(b.ids.numel()) * flops_.per_token(b.ids.size(1));
      r.phases.forward_backward_waits += clock.lap(r.phases.forward_backward);
    }
    return sums;
  }

  static void read_losses(const QueuedLosses& losses, StepRecord& r) {
    r.loss = static_cast<double>(losses.loss.item());
    for (const auto& [name, t] : losses.parts) r.parts.emplace_back(name, static_cast<double>(t.item()));
  }

  // With the built-in loss (compute_loss) of a model that knows its vocabulary and a batch made on
  // the host: checks every id and target (ids in [0, vocab), targets too or -100) and returns
  // true, so the device ops may skip theirs. Otherwise false: the ops check.
  bool tokens_checked_on_host(const Batch& b, std::int64_t index) const {
    if constexpr (requires { model_.vocab_size(); }) {
      if (loss_fn_ || !b.ids.defined() || !b.targets.defined() || !b.ids.device().is_cpu() ||
          !b.targets.device().is_cpu())
        return false;
      const std::int64_t vocab = model_.vocab_size();
      auto check_tokens = [&](const Tensor<std::int64_t>& t, const char* what, bool ignorable) {
        const std::vector<std::int64_t> v = t.to_vector();
        for (std::size_t i = 0; i < v.size(); ++i)
          check((v[i] >= 0 && v[i] < vocab) || (ignorable && v[i] == -100), "Trainer", "micro-batch ", index, ": ",
                what, " ", v[i], " at flat position ", i, " of shape ", t.shape(), " is out of range for the model's ",
                vocab, " tokens", ignorable ? " (or -100, ignored)" : "");
      };
      check_tokens(b.ids, "token id", false);
      check_tokens(b.targets, "target", true);
      return true;
    }
    return false;
  }

  Batch on_device(const Batch& b) const {
    check(b.ids.defined() && b.targets.defined() && b.ids.dim() == 2 && b.ids.shape() == b.targets.shape(), "Trainer",
          "a batch needs ids and targets of one shape [B, S], got ", b.ids.defined() ? b.ids.shape() : Shape{}, " and ",
          b.targets.defined() ? b.targets.shape() : Shape{});
    check(!b.cu_seqlens.defined() || b.ids.size(0) == 1, "Trainer", "a packed batch (cu_seqlens) is one row, got ids ",
          b.ids.shape());
    if (b.ids.device() == device_ && b.targets.device() == device_) return b;
    return {to(b.ids, device_), to(b.targets, device_), b.cu_seqlens};  // cu_seqlens stays on the host
  }

  LossParts<T> loss(const Batch& b) { return loss_fn_ ? loss_fn_(model_, b) : compute_loss(model_, b); }

  // w_k = n_k / Σ n over the batches (n_k: targets that are not ignore_index); 1/K when none counts.
  static std::vector<double> target_weights(const std::vector<Batch>& batches) {
    std::vector<double> n;
    double total = 0.0;
    for (const Batch& b : batches) {
      check(b.targets.defined(), "Trainer", "a batch needs targets");
      const std::vector<std::int64_t> t = b.targets.to_vector();
      n.push_back(static_cast<double>(std::count_if(t.begin(), t.end(), [](std::int64_t x) { return x != -100; })));
      total += n.back();
    }
    for (double& x : n) x = total > 0.0 ? x / total : 1.0 / static_cast<double>(batches.size());
    return n;
  }

  io::json schedule_json() const {
    const optim::CosineSchedule& c = options_.schedule;
    return {{"type", "warmup_cosine"}, {"peak_lr", c.peak_lr}, {"min_lr", c.min_lr},
            {"warmup_steps", c.warmup_steps}, {"total_steps", c.total_steps}};
  }

  void print_header() {
    header_printed_ = true;
    log(detail::format("training %lld parameters (%.4g active per token) on %s: %lld steps of %lld micro-batch(es); "
                       "FLOPs/token = %.4g + %.4g * seq_len\n",
                       static_cast<long long>(model_.num_parameters()), flops_.active_params, device_.name().c_str(),
                       static_cast<long long>(options_.steps), static_cast<long long>(options_.grad_accum),
                       6.0 * flops_.active_params,
                       6.0 * static_cast<double>(flops_.attention_layers) * flops_.attention_width));
  }

  void print_step(const StepRecord& r, std::int64_t tokens, double seconds, double flops) const {
    std::string line = detail::format("step %lld/%lld | loss %.4f%s | lr %.3e | grad %.3f%s", static_cast<long long>(r.step),
                                      static_cast<long long>(options_.steps), r.loss, detail::format_parts(r.parts).c_str(),
                                      r.lr, r.grad_norm, r.skipped ? " (skipped)" : "");
    if (seconds > 0.0) {
      line += detail::format(" | %.0f tok/s | %.3g GFLOP/s", static_cast<double>(tokens) / seconds, flops / seconds / 1e9);
      if (options_.peak_flops > 0.0) line += detail::format(" | MFU %.1f%%", 100.0 * flops / seconds / options_.peak_flops);
    }
    if constexpr (requires { model_.load_stats(); })
      line += detail::format(" | MaxVio %.3f (max %.3f)", r.max_vio_mean, r.max_vio_max);
    log(line + "\n");
  }

  // The interval's mean StepPhases in ms a step, and each phase's share of the step.
  void print_phases(const StepPhases& p, std::int64_t steps) const {
    const double n = static_cast<double>(std::max<std::int64_t>(steps, 1)), total = std::max(p.total(), 1e-12);
    auto part = [&](const char* name, double seconds) {
      return detail::format("%s %.2f ms (%.0f%%)", name, 1e3 * seconds / n, 100.0 * seconds / total);
    };
    log("  host per step: " + part("data", p.data) + " | " + part("forward+backward enqueued", p.forward_backward) +
        " | " + part("reads", p.reads) + " | " + part("clip", p.clip) + " | " +
        part("optimizer", p.optimizer) + " | " + part("balance", p.balance) + " | " + part("rest", p.rest) +
        detail::format(" | host waits %.1f (%.1f in forward+backward)\n", static_cast<double>(p.host_waits) / n,
                       static_cast<double>(p.forward_backward_waits) / n));
  }

  void print_eval(const EvalRecord& e) const {
    std::string line = detail::format("eval step %lld | val loss %.4f%s", static_cast<long long>(e.step), e.loss,
                                      detail::format_parts(e.parts).c_str());
    if (!e.max_vio.empty()) line += detail::format(" | val MaxVio %.3f (max %.3f)", e.max_vio_mean, e.max_vio_max);
    log(line + "\n");
  }

  Model& model_;
  TrainerOptions options_;
  BatchFn train_data_, validation_data_;
  LossFn<Model> loss_fn_;
  optim::AdamW<T> optimizer_;
  FlopsModel flops_;
  Device device_ = Device::cpu();
  std::int64_t step_ = 0, data_position_ = 0, tokens_seen_ = 0, skipped_steps_ = 0;
  double last_lr_ = 0.0;
  bool header_printed_ = false;  // once per trainer, however many run_until calls
  std::vector<StepRecord> history_;
  std::vector<EvalRecord> eval_history_;
};

}  // namespace kiln::train
