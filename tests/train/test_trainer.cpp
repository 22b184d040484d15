// The training loop (train/trainer.hpp) and the learning-rate schedule (optim/schedule.hpp):
// schedule values computed by hand, gradient accumulation of k micro-batches against one batch k
// times larger (double), a run resumed from a mid-run checkpoint reproducing the uninterrupted
// run's losses and weights bit for bit (float, CPU), a tiny model overfitting one batch, the FLOP
// count and the peak table.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <kiln/train/trainer.hpp>

#include "nn_test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;
using kiln::testing::tiny_deepseek_config;
using nn::DeepseekV3Config;
using nn::DeepseekV3ForCausalLM;
using optim::CosineSchedule;
using train::Batch;
using train::Trainer;
using train::TrainerOptions;

namespace {

DeepseekV3Config tiny_config() { return tiny_deepseek_config(0.1); }

// Rows [row0, row0 + rows) of a pseudo-random token matrix (seeded by `seed` and micro-batch
// `index`), as ids and next-token targets: a pure function of its arguments.
Batch random_batch(std::uint64_t seed, std::int64_t index, std::int64_t row0, std::int64_t rows, std::int64_t S,
                   std::int64_t vocab) {
  std::vector<std::int64_t> ids, targets;
  for (std::int64_t r = row0; r < row0 + rows; ++r) {
    Generator g{seed, static_cast<std::uint64_t>((index * 1000 + r) * (S + 1))};
    const auto row = randint<std::int64_t>(0, vocab, {S + 1}, Device::cpu(), g).to_vector();
    ids.insert(ids.end(), row.begin(), row.end() - 1);
    targets.insert(targets.end(), row.begin() + 1, row.end());
  }
  return {Tensor<std::int64_t>::from_vector(ids, {rows, S}), Tensor<std::int64_t>::from_vector(targets, {rows, S})};
}

std::string temp_dir(const std::string& name) {
  const auto p = std::filesystem::temp_directory_path() / ("kiln_test_trainer_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

}  // namespace

// ---- schedule --------------------------------------------------------------------------------

TEST(Schedule, WarmupThenCosineToTheFloor) {
  const CosineSchedule s{.peak_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 10, .total_steps = 110};
  // Warmup: peak · (s + 1) / 10.
  EXPECT_DOUBLE_EQ(s(0), 1e-4);
  EXPECT_DOUBLE_EQ(s(4), 5e-4);
  EXPECT_DOUBLE_EQ(s(9), 1e-3);
  // Cosine over the 100 steps 10..109: p = (s - 10) / 100.
  EXPECT_DOUBLE_EQ(s(10), 1e-3);                                      // p = 0
  EXPECT_NEAR(s(35), 1e-4 + 9e-4 * (1 + 0.70710678118654752) / 2, 1e-18);  // p = 1/4: cos = √2/2
  EXPECT_NEAR(s(60), 5.5e-4, 1e-18);                                  // p = 1/2: halfway
  EXPECT_NEAR(s(85), 1e-4 + 9e-4 * (1 - 0.70710678118654752) / 2, 1e-18);  // p = 3/4
  EXPECT_NEAR(s(109), 1e-4 + 9e-4 * (1 + std::cos(M_PI * 0.99)) / 2, 1e-18);
  // The floor from total_steps on.
  EXPECT_DOUBLE_EQ(s(110), 1e-4);
  EXPECT_DOUBLE_EQ(s(100000), 1e-4);
}

TEST(Schedule, EdgeCases) {
  const CosineSchedule no_warmup{.peak_lr = 2.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 4};
  EXPECT_DOUBLE_EQ(no_warmup(0), 2.0);
  EXPECT_NEAR(no_warmup(1), 1.0 + std::cos(M_PI / 4), 1e-15);
  EXPECT_NEAR(no_warmup(2), 1.0, 1e-15);
  EXPECT_DOUBLE_EQ(no_warmup(4), 0.0);
  const CosineSchedule warmup_only{.peak_lr = 1.0, .min_lr = 0.5, .warmup_steps = 4, .total_steps = 4};
  EXPECT_DOUBLE_EQ(warmup_only(3), 1.0);
  EXPECT_DOUBLE_EQ(warmup_only(4), 0.5);
  EXPECT_KILN_ERROR(no_warmup(-1), "CosineSchedule", "-1");
  const CosineSchedule bad{.peak_lr = 1e-3, .min_lr = 1e-2, .warmup_steps = 0, .total_steps = 10};
  EXPECT_KILN_ERROR(bad.validate(), "CosineSchedule", "min_lr");
}

// ---- gradient accumulation ------------------------------------------------------------------

// k micro-batches of B/k rows accumulate the gradient of the one batch of B rows: every loss term
// (next-token CE, MTP CE, the sequence-wise balance loss) is a mean over equally many terms per
// micro-batch.
TEST(Trainer, GradientAccumulationEqualsOneBigBatch) {
  auto c = tiny_config();
  c.seq_aux_loss_alpha = 0.01;  // the balance loss too
  const std::int64_t B = 4, S = 7;
  auto gradients = [&](std::int64_t k) {
    Generator gen{11, 0};
    auto model = std::make_unique<DeepseekV3ForCausalLM<double>>(c, gen);
    TrainerOptions o;
    o.steps = 1;
    o.grad_accum = k;
    o.log = nullptr;
    // Micro-batch i of step 0 is rows [i·B/k, (i+1)·B/k) of the same big batch.
    Trainer trainer(*model, o, [&](std::int64_t i) { return random_batch(5, 0, i * (B / k), B / k, S, c.vocab_size); });
    const train::StepRecord r = trainer.compute_gradients(0);
    std::vector<double> g;
    for (const auto& p : model->parameters()) {
      EXPECT_TRUE(p.grad().defined());
      const auto v = p.grad().to_vector();
      g.insert(g.end(), v.begin(), v.end());
    }
    return std::make_pair(r, g);
  };
  const auto [one, g1] = gradients(1);
  for (std::int64_t k : {2, 4}) {
    const auto [acc, gk] = gradients(k);
    EXPECT_LT(relative_error(gk, g1), 1e-12) << "k = " << k;
    EXPECT_NEAR(acc.loss, one.loss, 1e-13) << "k = " << k;
    ASSERT_EQ(acc.parts.size(), one.parts.size());
    for (std::size_t i = 0; i < one.parts.size(); ++i)
      EXPECT_NEAR(acc.parts[i].second, one.parts[i].second, 1e-13) << one.parts[i].first << ", k = " << k;
    EXPECT_EQ(acc.tokens, one.tokens);
  }
  EXPECT_GT(one.parts.at(2).second, 0.0);  // the balance loss is present
}

TEST(Trainer, GradientAccumulationLlama) {
  nn::LlamaConfig c;
  c.vocab_size = 20;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  auto gradients = [&](std::int64_t k) {
    Generator gen{3, 0};
    nn::LlamaForCausalLM<double> model(c, gen);
    TrainerOptions o;
    o.steps = 1;
    o.grad_accum = k;
    o.log = nullptr;
    Trainer trainer(model, o, [&](std::int64_t i) { return random_batch(9, 0, i * (6 / k), 6 / k, 5, c.vocab_size); });
    trainer.compute_gradients(0);
    std::vector<double> g;
    for (const auto& p : model.parameters()) {
      const auto v = p.grad().to_vector();
      g.insert(g.end(), v.begin(), v.end());
    }
    return g;
  };
  const auto g1 = gradients(1);
  EXPECT_LT(relative_error(gradients(3), g1), 1e-12);
}

// ---- resume ----------------------------------------------------------------------------------

// A float run interrupted after a checkpoint at step 5 and resumed (into a model built from another
// seed, so every weight must come from the checkpoint) continues with exactly the losses, gradient
// norms and final weights of the uninterrupted run. Aux-loss-free balancing is on (γ large enough
// to move routing), with gradient accumulation and clipping.
TEST(Trainer, ResumeReproducesTheUninterruptedRunBitForBit) {
  auto c = tiny_config();
  c.aux_loss_free_gamma = 0.01;
  const std::int64_t steps = 12;
  TrainerOptions o;
  o.steps = steps;
  o.grad_accum = 2;
  o.max_grad_norm = 0.5;
  o.schedule = {.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 3};
  o.adamw.weight_decay = 0.1;
  o.log = nullptr;
  auto data = [&](std::int64_t i) { return random_batch(21, i, 0, 2, 6, c.vocab_size); };
  auto validation = [&](std::int64_t i) { return random_batch(22, i, 0, 2, 6, c.vocab_size); };

  Generator gen_a{1, 0};
  DeepseekV3ForCausalLM<float> a(c, gen_a);
  Trainer full(a, o, data, validation);
  full.run();
  ASSERT_EQ(full.history().size(), static_cast<std::size_t>(steps));

  const std::string dir = temp_dir("resume");
  {
    Generator gen_b{1, 0};
    DeepseekV3ForCausalLM<float> b(c, gen_b);
    TrainerOptions ob = o;
    ob.checkpoint_dir = dir;
    ob.checkpoint_every = 5;
    ob.eval_every = 2;  // evaluation in between must not disturb training
    Trainer first(b, ob, data, validation);
    first.run_until(7);  // "crashes" after step 7: the checkpoint holds step 5
    for (std::size_t i = 0; i < 7; ++i) EXPECT_EQ(first.history()[i].loss, full.history()[i].loss) << "step " << i + 1;
  }
  Generator gen_c{999, 0};
  DeepseekV3ForCausalLM<float> resumed_model(c, gen_c);
  Trainer resumed(resumed_model, o, data, validation);
  resumed.resume(dir);
  EXPECT_EQ(resumed.steps_done(), 5);
  EXPECT_EQ(resumed.data_position(), 10);
  resumed.run();
  ASSERT_EQ(resumed.history().size(), static_cast<std::size_t>(steps - 5));
  for (std::size_t i = 0; i < resumed.history().size(); ++i) {
    const auto& r = resumed.history()[i];
    const auto& f = full.history()[i + 5];
    EXPECT_EQ(r.step, f.step);
    EXPECT_EQ(r.loss, f.loss) << "step " << f.step;
    EXPECT_EQ(r.grad_norm, f.grad_norm) << "step " << f.step;
    EXPECT_EQ(r.lr, f.lr) << "step " << f.step;
    EXPECT_EQ(r.max_vio_mean, f.max_vio_mean) << "step " << f.step;
  }
  const auto sa = a.state(), sr = resumed_model.state();
  ASSERT_EQ(sa.size(), sr.size());
  bool bias_moved = false;
  for (std::size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sr[i].first);
    EXPECT_EQ(sa[i].second.to_vector(), sr[i].second.to_vector()) << sa[i].first;
    if (sa[i].first.find("e_score_correction_bias") != std::string::npos)
      for (float v : sa[i].second.to_vector()) bias_moved |= v != 0.0f;
  }
  EXPECT_TRUE(bias_moved);
  EXPECT_EQ(resumed.eval_history().back().loss, full.eval_history().back().loss);
  std::filesystem::remove_all(dir);
}

TEST(Trainer, ResumeRejectsAMismatchedCheckpoint) {
  auto c = tiny_config();
  TrainerOptions o;
  o.steps = 2;
  o.log = nullptr;
  const std::string dir = temp_dir("mismatch");
  o.checkpoint_dir = dir;
  auto data = [&](std::int64_t i) { return random_batch(1, i, 0, 1, 4, c.vocab_size); };
  Generator gen{1, 0};
  DeepseekV3ForCausalLM<float> m(c, gen);
  Trainer(m, o, data).run();
  auto other = c;
  other.n_routed_experts = 6;
  other.n_group = 3;
  DeepseekV3ForCausalLM<float> wrong(other, gen);
  TrainerOptions o2 = o;
  o2.checkpoint_dir.clear();
  Trainer t(wrong, o2, data);
  // The config is compared first: every differing field is named before any tensor is read.
  EXPECT_KILN_ERROR(t.resume(dir), "load_training_checkpoint", "config.json", "differs from the model's in 2 field(s)",
                    "n_routed_experts (checkpoint 4, model 6)", "n_group (checkpoint 2, model 3)");
  TrainerOptions short_run = o2;
  short_run.steps = 1;
  DeepseekV3ForCausalLM<float> same(c, gen);
  Trainer t2(same, short_run, data);
  EXPECT_KILN_ERROR(t2.resume(dir), "Trainer::resume", "step 2");
  std::filesystem::remove_all(dir);
}

// ---- overfitting -----------------------------------------------------------------------------

TEST(Trainer, TinyModelOverfitsOneBatch) {
  auto c = tiny_config();
  c.hidden_size = 32;
  Generator gen{7, 0};
  DeepseekV3ForCausalLM<float> model(c, gen);
  const Batch batch = random_batch(8, 0, 0, 2, 8, c.vocab_size);
  TrainerOptions o;
  o.steps = 200;
  o.schedule = {.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 10};
  o.adamw.weight_decay = 0.0;
  o.log = nullptr;
  Trainer trainer(model, o, [&](std::int64_t) { return batch; }, [&](std::int64_t) { return batch; });
  trainer.run();
  const auto& h = trainer.history();
  EXPECT_GT(h.front().parts.front().second, 3.0);  // about log(32) at the start
  const train::EvalRecord e = trainer.eval_history().back();
  EXPECT_LT(e.loss, 0.05) << "main loss after " << o.steps << " steps";
  EXPECT_LT(h.back().loss, 0.05) << "total loss (main + MTP) of the last step";
  std::printf("overfit: loss %.4f -> %.4f (main %.4f)\n", h.front().loss, h.back().loss, e.loss);
}

// ---- step phases ---------------------------------------------------------------------------

// Every step's phases are non-negative and add up to its seconds; the batches the BatchFn makes
// land in `data` (a BatchFn that sleeps 20 ms shows there and nowhere else); with time_phases the
// progress lines are each followed by the interval's mean phases, and without it they are not.
TEST(Trainer, StepPhasesAddUpAndArePrinted) {
  auto c = tiny_config();
  Generator gen{3, 0};
  DeepseekV3ForCausalLM<float> model(c, gen);
  TrainerOptions o;
  o.steps = 4;
  o.grad_accum = 2;
  o.log_every = 2;
  o.eval_batches = 0;
  o.time_phases = true;
  const std::string dir = temp_dir("phases");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/log.txt";
  std::FILE* log = std::fopen(path.c_str(), "w");
  ASSERT_NE(log, nullptr);
  o.log = log;
  auto data = [&](std::int64_t i) {
    usleep(10000);  // 10 ms a micro-batch: 20 ms a step
    return random_batch(31, i, 0, 2, 6, c.vocab_size);
  };
  Trainer trainer(model, o, data);
  trainer.run();
  std::fclose(log);
  for (const auto& r : trainer.history()) {
    SCOPED_TRACE(::testing::Message() << "step " << r.step);
    for (const double p : {r.phases.data, r.phases.forward_backward, r.phases.reads, r.phases.clip,
                           r.phases.optimizer, r.phases.balance, r.phases.rest})
      EXPECT_GE(p, 0.0);
    EXPECT_NEAR(r.phases.total(), r.seconds, 1e-4);
    EXPECT_GE(r.phases.data, 0.02);
    EXPECT_GT(r.phases.forward_backward, 0.0);
    EXPECT_EQ(r.phases.host_waits, 0);  // all on the CPU: nothing waits for a device
  }
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "r");
    ASSERT_NE(f, nullptr);
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
  }
  // Progress after steps 1, 2 and 4, each followed by its phases line.
  std::size_t lines = 0;
  for (std::size_t at = 0; (at = text.find("  host per step: data ", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 3u) << text;
  EXPECT_NE(text.find("forward+backward enqueued"), std::string::npos);
  EXPECT_NE(text.find("| reads "), std::string::npos);
  EXPECT_NE(text.find("host waits 0.0 (0.0 in forward+backward)"), std::string::npos) << text;

  o.time_phases = false;
  std::FILE* quiet = std::fopen(path.c_str(), "w");
  ASSERT_NE(quiet, nullptr);
  o.log = quiet;
  Generator gen2{3, 0};
  DeepseekV3ForCausalLM<float> model2(c, gen2);
  Trainer plain(model2, o, [&](std::int64_t i) { return random_batch(31, i, 0, 2, 6, c.vocab_size); });
  plain.run();
  std::fclose(quiet);
  std::FILE* f = std::fopen(path.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string plain_text(8192, '\0');
  plain_text.resize(std::fread(plain_text.data(), 1, plain_text.size(), f));
  std::fclose(f);
  EXPECT_NE(plain_text.find("step 4/4"), std::string::npos) << plain_text;
  EXPECT_EQ(plain_text.find("host per step"), std::string::npos) << plain_text;
  std::filesystem::remove_all(dir);
}

// ---- FLOPs and peaks -------------------------------------------------------------------------

TEST(Trainer, FlopsModelCountsActiveParameters) {
  auto c = tiny_config();
  Generator gen{1, 0};
  DeepseekV3ForCausalLM<float> m(c, gen);
  // By hand from the names: the embedding is a lookup, lm_head runs for the main model and the
  // one MTP depth, routed experts count K / N_r = 1/2.
  double expected = 0.0;
  for (const auto& [name, p] : m.named_parameters()) {
    const double n = static_cast<double>(p.numel());
    if (name == "model.embed_tokens.weight") continue;
    if (name == "lm_head.weight") expected += 2 * n;
    else if (name.find(".mlp.experts.") != std::string::npos) expected += n / 2;
    else expected += n;
  }
  const train::FlopsModel f = train::flops_model(m);
  EXPECT_DOUBLE_EQ(f.active_params, expected);
  EXPECT_EQ(f.attention_layers, 3);               // 2 layers + 1 MTP block
  EXPECT_DOUBLE_EQ(f.attention_width, 2.0 * 12);  // heads · (4 + 4 + 4)
  EXPECT_DOUBLE_EQ(f.per_token(10), 6 * expected + 6 * 3 * 10 * 24.0);

  c.mtp_loss_weight = 0.0;  // the MTP block does not run
  DeepseekV3ForCausalLM<float> no_mtp(c, gen);
  EXPECT_EQ(train::flops_model(no_mtp).attention_layers, 2);
  EXPECT_LT(train::flops_model(no_mtp).active_params, expected);

  nn::LlamaConfig lc;
  lc.vocab_size = 10;
  lc.hidden_size = 8;
  lc.intermediate_size = 12;
  lc.num_hidden_layers = 1;
  lc.num_attention_heads = 2;
  lc.num_key_value_heads = 1;
  nn::LlamaForCausalLM<float> llama(lc, gen);
  // q 8·8, k and v 4·8 each, o 8·8, mlp 3·8·12, two norms 8 each, final norm 8, lm_head 10·8.
  const double n = 64 + 32 + 32 + 64 + 288 + 16 + 8 + 80;
  EXPECT_DOUBLE_EQ(train::flops_model(llama).active_params, n);
  EXPECT_DOUBLE_EQ(train::flops_model(llama).attention_width, 2.0 * 2 * 4);
}

TEST(Trainer, PeakTable) {
  EXPECT_DOUBLE_EQ(train::peak_flops("NVIDIA H100 80GB HBM3", "bf16"), 989.4e12);
  EXPECT_DOUBLE_EQ(train::peak_flops("NVIDIA H100 80GB HBM3", "tf32"), 494.7e12);
  EXPECT_DOUBLE_EQ(train::peak_flops("NVIDIA H100 PCIe", "bf16"), 756.5e12);
  EXPECT_DOUBLE_EQ(train::peak_flops("NVIDIA H200", "bf16"), 989.4e12);
  EXPECT_DOUBLE_EQ(train::peak_flops("NVIDIA A100-SXM4-80GB", "fp32"), 19.5e12);
  EXPECT_EQ(train::peak_flops("Some Other GPU", "bf16"), 0.0);
  EXPECT_KILN_ERROR(train::peak_flops("NVIDIA H100 80GB HBM3", "int4"), "peak_flops", "int4");
}

TEST(Trainer, BadOptions) {
  auto c = tiny_config();
  Generator gen{1, 0};
  DeepseekV3ForCausalLM<float> m(c, gen);
  auto data = [&](std::int64_t i) { return random_batch(1, i, 0, 1, 4, c.vocab_size); };
  TrainerOptions o;
  o.grad_accum = 0;
  EXPECT_KILN_ERROR(Trainer trainer(m, o, data), "Trainer", "grad_accum");
  TrainerOptions bad_batch;
  bad_batch.steps = 1;
  bad_batch.log = nullptr;
  Trainer t(m, bad_batch, [](std::int64_t) {
    return Batch{Tensor<std::int64_t>::from_vector({1, 2, 3}, {1, 3}), Tensor<std::int64_t>::from_vector({1, 2}, {1, 2})};
  });
  EXPECT_KILN_ERROR(t.step(), "Trainer", "[1, 3]", "[1, 2]");
}

// The trainer checks a host batch's token ids itself (so that on a GPU the ops' checks, each a
// wait, are skipped): an id or target outside the vocabulary is an error naming the micro-batch,
// the value and its position; -100 targets are ignored, not errors.
TEST(Trainer, TokenIdsOutOfRange) {
  auto c = tiny_config();
  Generator gen{1, 0};
  DeepseekV3ForCausalLM<float> m(c, gen);
  const std::int64_t V = c.vocab_size;
  auto run = [&](std::vector<std::int64_t> ids, std::vector<std::int64_t> targets) {
    TrainerOptions o;
    o.steps = 2;
    o.log = nullptr;
    Trainer t(m, o, [&](std::int64_t i) {
      if (i == 0) return random_batch(1, i, 0, 1, 4, V);
      return Batch{Tensor<std::int64_t>::from_vector(ids, {1, 4}), Tensor<std::int64_t>::from_vector(targets, {1, 4})};
    });
    t.step();
    t.step();
  };
  EXPECT_KILN_ERROR(run({1, 2, V, 3}, {2, V - 1, 3, 4}), "Trainer", "micro-batch 1", "token id " + std::to_string(V),
                    "flat position 2", "[1, 4]");
  EXPECT_KILN_ERROR(run({1, 2, 0, 3}, {2, -1, 3, 4}), "Trainer", "micro-batch 1", "target -1", "flat position 1",
                    "or -100");
  EXPECT_NO_THROW(run({1, 2, 0, 3}, {2, -100, 3, V - 1}));
}
