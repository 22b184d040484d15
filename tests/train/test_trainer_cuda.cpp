// A few optimizer steps of pretrain's big config (examples/pretrain/task_data.hpp: big_config,
// ~100M parameters: hidden 768, 1 dense + 6 MoE layers of 8 experts top-2 of 2 of 4 groups, a
// shared expert, MLA with 12 heads, one MTP depth) with pretrain's trainer settings (AdamW, weight
// decay 0.1, clipping at 1.0, warmup + cosine from lr 6e-4) on the GPU against the CPU run of the
// same steps: same initial weights, same batches (B = 2, S = 64 of pretrain's packed-window
// BatchFn over a random token stream: the numerics do not depend on the text). Four runs in
// lockstep: float on the CPU and on the GPU, and bf16 with FP32 master weights on the CPU and on the
// GPU. Each GPU run is compared with the CPU run of the same precision, per step: the loss and its
// parts (main, MTP, balance) and the gradient norm; after the last step the parameters (the FP32
// master weights of the bf16 runs). The bf16 GPU run takes the composed attention and MoE paths,
// the CPU's arithmetic (the CPU always composes). What `pretrain --device cuda --config big` runs,
// the fused attention and MoE kernels, is checked at every step at the bf16 GPU run's weights: a
// fifth model gets those weights before the step and computes the same loss and gradient with the
// fused kernels (it does not follow its own trajectory: see "fused paths" below).
// The initial weights are pretrain's init (seed 1) rounded to bf16, so all four runs start from
// the same weights. (A bf16 run against the float one would measure bf16, not the GPU: after one
// update the bf16 model holds its master weights rounded to bf16, 1e-4 of a weight of 0.02 against
// an update of 3e-4, and its gradient norm moved by 3.4% from the float run's at step 2 on an
// H200, as bf16 on the CPU does.)
//
// Tolerances:
//   float GPU vs float CPU: losses 1e-5 relative, gradient norm 1e-4: float on both devices,
//     differing in accumulation order (~1e-6 per op after GEMMs over 768..2048 terms). Final
//     parameters 3e-4 relative (over all of them): AdamW's first steps move each weight by about
//     ±lr whatever its gradient's size, so a weight whose gradient is within the devices'
//     difference of 0 (~1e-6 of the typical gradient: ~1e-6 of the weights) may move the other
//     way: ~100 of 1e8 weights by 2·lr = 1.2e-3 against a parameter norm of ~200: ~6e-5.
//   bf16 GPU vs bf16 CPU: the same arithmetic (bf16 storage, float accumulation), differing where
//     the two devices' float sums round to neighbouring bf16 values, and those differences
//     compound through 8 layers and back. Losses 1.5e-2 relative: a bf16 model's loss is a bf16
//     scalar, and between 8 and 16 (main ~7.6 = ln 2048 plus 0.3 x MTP) bf16's spacing is 0.0625,
//     up to 3e-3 relative in the rounding alone, on top of the compounding. Gradient norm 3e-2
//     (bf16 gradients carry ~1e-2 relative rounding through the backward). Final parameters 3e-2:
//     by the sign argument above, now for the ~1% of weights whose gradient is within bf16
//     rounding of 0, over three steps. These bounds also hold for bf16 against float on the CPU
//     (measured: loss 6.3e-3, MTP part 7e-3 at step 3), so they are loose for bf16 against bf16.
//   fused paths vs composed, at the same weights: bf16 rounding at other points (the fused
//     attention keeps scores and probabilities in float until P·V; the routing kernel rounds the
//     affinities once, the composed ops after each op), so the bf16 bounds above (losses 1.5e-2,
//     gradient norm 3e-2). Why not a fused run along its own trajectory: two bf16 arithmetics
//     that differ in rounding points diverge like bf16 and float do (above: 3.4% in the gradient
//     norm at step 2). Measured on an H200 (2026-12-04): a fused trajectory's gradient norm was
//     0.86%, 0.56%, 3.5% from the bf16 CPU run's at steps 1-3 and 0.6%, 2.4%, 4.7% from float's,
//     the composed GPU run's 0.87%, 3.4%, 1.4% from float's, and both runs' final weights 1.7-1.8%
//     from the bf16 CPU run's: trajectory noise, not one path's error.
// MoE routing: at pretrain's init (std 0.02) the expert affinities are sigmoid(z) with z ~ N(0,
// 0.55), ~1800 routing decisions per step, and some gaps are tiny.
//   float: each step's batch is the first candidate on which every routing decision of the CPU
//     model (every MoE layer, the MTP block's included) has a margin >= 1e-5, ~80 times the
//     devices' float difference in an affinity (~1e-7); the GPU run gets the same batches. So
//     no token changes experts between the float runs, by construction.
//   bf16: bf16 affinities differ between devices by up to ~1e-3, so a few tokens may pick other
//     experts on the other device. At init an expert's output is ~1e-4 of the residual stream (three 0.02-std
//     matrices), so a switched token moves the loss by far less than the bf16 tolerance; its
//     gradient goes to another of two nearly tied experts, which changes those experts' updates
//     only in the weights the sign argument above already covers (a token is 1/32 of an expert's
//     batch).
#include <kiln/train/trainer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../../examples/pretrain/task_data.hpp"
#include "cuda_test_util.hpp"
#include "nn_test_util.hpp"
#include "routing_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using nn::DeepseekV3ForCausalLM;

namespace {

constexpr std::int64_t kVocab = 2048;  // pretrain --config big: --vocab 2048 (padded_vocab keeps it)
constexpr std::int64_t kBatch = 2, kSeq = 64, kSteps = 3;

// The smallest routing margin of m over every MoE layer for ids.
template <class T>
double model_routing_margin(DeepseekV3ForCausalLM<T>& m, const Tensor<std::int64_t>& ids) {
  const std::vector<Tensor<T>> inputs = moe_inputs(m, ids);
  const auto layers = m.moe_layers();
  EXPECT_EQ(inputs.size(), layers.size());
  double margin = INFINITY;
  for (std::size_t l = 0; l < layers.size() && l < inputs.size(); ++l)
    margin = std::min(margin, min_routing_margin(layers[l].second->gate, inputs[l], m.model.config));
  return margin;
}

// sqrt(Σ ||a_i − b_i||² / Σ ||b_i||²) over a list of tensors (a on any device), and the name of the
// tensor with the largest own relative error.
template <class A, class B>
std::pair<double, std::string> global_relative_error(const std::vector<Tensor<A>>& a, const std::vector<Tensor<B>>& b,
                                                     const std::vector<std::string>& names) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0.0, den = 0.0, worst = -1.0;
  std::string worst_name;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const ErrorStats e = relative_error(on_cpu(a[i].detach()), b[i].detach());
    num += std::isfinite(e.relative) ? e.error_sq : INFINITY;  // a NaN or inf mismatch fails the pooled error too
    den += e.ref_sq;
    const double own = e.relative;
    if (!(own <= worst)) worst = own, worst_name = names[i] + " (" + std::to_string(own) + ")";
  }
  return {std::sqrt(num / den), worst_name};
}

double relative(double a, double ref) { return std::abs(a - ref) / std::abs(ref); }

// dst gets copies of src's parameters and buffers, cast to U (own storage; parameters require grad).
template <class U, class T>
void copy_into(nn::Module<U>& dst, const nn::Module<T>& src) {
  const auto s = src.state();
  std::size_t i = 0;
  dst.visit("", [&](const std::string& name, Tensor<U>* t, bool trainable) {
    ASSERT_EQ(name, s[i].first);
    Tensor<U> v = clone(cast<U>(s[i++].second.detach()));
    if (trainable) v.requires_grad_();
    *t = v;
  });
}

}  // namespace

TEST(TrainerCuda, PretrainBigConfigStepsMatchCpu) {
  KILN_REQUIRE_GPU();
  const nn::DeepseekV3Config c = example::big_config(kVocab);

  // pretrain's init (Generator{seed 1, 0}), rounded to bf16, on the CPU in float.
  Generator init{1, 0};
  auto cpu = std::make_unique<DeepseekV3ForCausalLM<float>>(c, init);
  cpu->visit("", [](const std::string&, Tensor<float>* t, bool trainable) {
    Tensor<float> v = cast<float>(cast<bf16>(t->detach()));
    if (trainable) v.requires_grad_();
    *t = v;
  });
  Generator unused{2, 0};
  auto gpu_bf16 = std::make_unique<DeepseekV3ForCausalLM<bf16>>(c, unused);
  auto gpu_float = std::make_unique<DeepseekV3ForCausalLM<float>>(c, unused);
  auto cpu_bf16 = std::make_unique<DeepseekV3ForCausalLM<bf16>>(c, unused);
  auto gpu_fused = std::make_unique<DeepseekV3ForCausalLM<bf16>>(c, unused);
  copy_into(*gpu_bf16, *cpu);
  copy_into(*gpu_float, *cpu);
  copy_into(*cpu_bf16, *cpu);
  gpu_bf16->to(gpu);
  gpu_float->to(gpu);
  ASSERT_EQ(gpu_bf16->device(), gpu);
  ASSERT_EQ(gpu_float->device(), gpu);

  // pretrain's trainer settings for the big config (lr 6e-4 to 6e-5, weight decay 0.1, clip 1.0),
  // with a warmup of 2 steps over these 3 so that the steps are full-size.
  train::TrainerOptions o;
  o.steps = kSteps;
  o.max_grad_norm = 1.0;
  o.schedule = {.peak_lr = 6e-4, .min_lr = 6e-5, .warmup_steps = 2, .total_steps = kSteps};
  o.adamw.weight_decay = 0.1;
  o.log = nullptr;

  // pretrain's batches (B windows of S + 1 tokens at Philox offsets) over a random token stream;
  // step i trains on the first candidate batch i·1000 + j whose routing margins are >= 1e-5 on the
  // CPU model as it is before that step (file comment).
  std::vector<std::int64_t> stream;
  {
    Generator g{5, 0};
    stream = randint<std::int64_t>(0, kVocab, {20000}, Device::cpu(), g).to_vector();
  }
  const train::BatchFn candidates = example::train_batches(stream, kBatch, kSeq, 1 * 1000003ull + 17);
  std::vector<train::Batch> chosen;
  const train::BatchFn batches = [&](std::int64_t i) { return chosen.at(static_cast<std::size_t>(i)); };
  train::Trainer cpu_trainer(*cpu, o, batches);
  train::Trainer bf16_trainer(*gpu_bf16, o, batches);
  train::Trainer float_trainer(*gpu_float, o, batches);
  train::Trainer cpu_bf16_trainer(*cpu_bf16, o, batches);

  std::vector<Tensor<float>> initial;
  for (const auto& p : cpu->parameters()) initial.push_back(clone(p.detach()));

  for (std::int64_t step = 0; step < kSteps; ++step) {
    SCOPED_TRACE(str("step ", step + 1));
    bool found = false;
    for (std::int64_t j = 0; j < 50 && !found; ++j) {
      const train::Batch b = candidates(step * 1000 + j);
      if (model_routing_margin(*cpu, b.ids) >= 1e-5) {
        chosen.push_back(b);
        found = true;
      }
    }
    ASSERT_TRUE(found) << "no candidate batch routes with margin 1e-5";
    // The fused model gets the bf16 GPU run's weights as they are before this step (to() packs its
    // experts again after copy_into replaced them) and computes this step's loss and gradient
    // norm; its own optimizer's update is not used.
    copy_into(*gpu_fused, *gpu_bf16);
    gpu_fused->to(gpu);
    const train::StepRecord rfu = train::Trainer(*gpu_fused, o, [&](std::int64_t) { return chosen.back(); }).step();
    const train::StepRecord rc = cpu_trainer.step();
    const train::StepRecord rb = [&] {
      const nn::AttentionPathScope attention(nn::AttentionPath::composed);
      const nn::MoEDispatchScope moe(nn::MoEDispatch::composed);
      return bf16_trainer.step();
    }();
    const train::StepRecord rf = float_trainer.step();
    const train::StepRecord rcb = cpu_bf16_trainer.step();
    ASSERT_TRUE(std::isfinite(rc.loss) && !rc.skipped && !rb.skipped && !rf.skipped && !rcb.skipped);
    EXPECT_LE(relative(rf.loss, rc.loss), 1e-5) << "float GPU loss " << rf.loss << ", CPU " << rc.loss;
    EXPECT_LE(relative(rb.loss, rcb.loss), 1.5e-2) << "bf16 GPU loss " << rb.loss << ", CPU " << rcb.loss;
    ASSERT_EQ(rc.parts.size(), 3u);
    ASSERT_EQ(rb.parts.size(), rc.parts.size());
    ASSERT_EQ(rf.parts.size(), rc.parts.size());
    ASSERT_EQ(rcb.parts.size(), rc.parts.size());
    ASSERT_EQ(rfu.parts.size(), rc.parts.size());
    ASSERT_TRUE(!rfu.skipped);
    EXPECT_LE(relative(rfu.loss, rb.loss), 1.5e-2) << "fused bf16 loss " << rfu.loss << ", composed " << rb.loss;
    for (std::size_t k = 0; k < rc.parts.size(); ++k) {
      if (rc.parts[k].first == "bal") continue;  // seq_aux_loss_alpha = 0 in pretrain: always 0
      EXPECT_LE(relative(rf.parts[k].second, rc.parts[k].second), 1e-5) << rc.parts[k].first;
      EXPECT_LE(relative(rb.parts[k].second, rcb.parts[k].second), 1.5e-2) << rc.parts[k].first;
      EXPECT_LE(relative(rfu.parts[k].second, rb.parts[k].second), 1.5e-2) << rc.parts[k].first << " (fused)";
    }
    EXPECT_LE(relative(rf.grad_norm, rc.grad_norm), 1e-4) << "float GPU grad norm " << rf.grad_norm << ", CPU " << rc.grad_norm;
    EXPECT_LE(relative(rb.grad_norm, rcb.grad_norm), 3e-2) << "bf16 GPU grad norm " << rb.grad_norm << ", CPU " << rcb.grad_norm;
    EXPECT_LE(relative(rfu.grad_norm, rb.grad_norm), 3e-2) << "fused bf16 grad norm " << rfu.grad_norm << ", composed "
                                                          << rb.grad_norm;
    std::printf("step %lld: loss float CPU %.6f GPU %.6f, bf16 CPU %.6f GPU %.6f fused %.6f; grad norm float CPU %.5f "
                "GPU %.5f, bf16 CPU %.5f GPU %.5f fused %.5f\n",
                static_cast<long long>(step + 1), rc.loss, rf.loss, rcb.loss, rb.loss, rfu.loss, rc.grad_norm,
                rf.grad_norm, rcb.grad_norm, rb.grad_norm, rfu.grad_norm);
    EXPECT_EQ(rf.lr, rc.lr);
    EXPECT_EQ(rb.lr, rc.lr);
  }

  // The weights moved, and alike on both devices.
  std::vector<std::string> names;
  std::vector<Tensor<float>> cpu_params;
  for (auto& [name, p] : cpu->named_parameters()) names.push_back(name), cpu_params.push_back(p);
  const auto [moved, most_moved] = global_relative_error(cpu_params, initial, names);
  EXPECT_GT(moved, 1e-3) << "the steps hardly changed the weights";
  const auto float_params = gpu_float->parameters();
  for (const auto& p : float_params) EXPECT_EQ(p.device(), gpu);
  const auto [float_error, float_worst] = global_relative_error(float_params, cpu_params, names);
  EXPECT_LE(float_error, 3e-4) << "worst tensor: " << float_worst;
  const std::vector<Tensor<float>>& master = bf16_trainer.optimizer().master_weights();
  const std::vector<Tensor<float>>& cpu_master = cpu_bf16_trainer.optimizer().master_weights();
  ASSERT_EQ(master.size(), cpu_params.size());
  ASSERT_EQ(cpu_master.size(), cpu_params.size());
  for (const auto& p : master) EXPECT_EQ(p.device(), gpu);
  const auto [bf16_error, bf16_worst] = global_relative_error(master, cpu_master, names);
  EXPECT_LE(bf16_error, 3e-2) << "worst tensor: " << bf16_worst;
  std::printf("final parameters: float GPU vs CPU %.3g (worst %s), bf16 GPU vs CPU %.3g (worst %s)\n", float_error,
              float_worst.c_str(), bf16_error, bf16_worst.c_str());
}
