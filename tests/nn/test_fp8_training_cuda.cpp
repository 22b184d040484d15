// FP8 training on the GPU against the CPU (nn/fp8_training.hpp): one step of a DeepSeek-V3 model in
// bf16 with its linears in FP8, on the GPU's default paths (the Hopper FP8 GEMM, the fused MoE path
// with the grouped FP8 GEMM, fused attention) and on the CPU (the FP8 GEMM's CPU reference, the
// fused MoE path's CPU loops, so the experts' products are the same FP8 products and the same
// unquantized weight gradient). Compared: the loss and every gradient.
//
// The yardstick is FP8 itself. On the CPU this test's FP8 step is 9.7% from the same step without
// FP8 globally (4-15% per tensor; bf16, fused MoE path). The two devices' FP8 steps differ only
// where their bf16 inputs differ (a bf16 rounding, 2^-8 relative, in a few elements) and that
// moves an element across an e4m3 rounding boundary (spacing 2^-3 relative): about 1 element in
// 32, each by one e4m3 step, about 0.6 of FP8's rms error in amplitude at most. (A pessimistic
// stand-in on the CPU, float activations against bf16 ones, which differ by a rounding in every
// element: 7.2% globally against 9.7%, every tensor below its own FP8 error, the largest ratio
// 0.86.) So the devices must agree with each other more
// closely than the CPU's FP8 step agrees with its unquantized step: globally (all gradients
// together) and, per tensor, within that tensor's own FP8 error or the bf16 models' GPU-vs-CPU
// bound (test_models_cuda.cpp: 6e-2), whichever is larger. A kernel that read a wrong group's rows
// or scales, or skipped a tile, is off by its whole share of the gradient. The per-tensor table is
// printed, to localize a failure.
//
// Sizes: multiples of 128 where the Hopper kernels tile (hidden 256, expert width 128, q_lora 128,
// kv_lora 128), 4 heads of (64 + 32, 64): the fused attention's (96, 64) variant. Every token goes
// to every expert (top-6 of 6 in one group), so FP8's changes to the affinities move the gates but
// cannot switch experts.
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/fp8_training.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

nn::DeepseekV3Config fp8_test_config() {
  nn::DeepseekV3Config c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.n_shared_experts = 1;
  c.n_routed_experts = 6;
  c.num_experts_per_tok = 6;
  c.n_group = 1;
  c.topk_group = 1;
  c.kv_lora_rank = 128;
  c.q_lora_rank = 128;
  c.qk_rope_head_dim = 32;
  c.qk_nope_head_dim = 64;
  c.v_head_dim = 64;
  c.first_k_dense_replace = 1;
  c.max_position_embeddings = 256;
  return c;
}

}  // namespace

TEST(Fp8TrainingCuda, StepMatchesCpu) {
  KILN_REQUIRE_GPU();
  const nn::DeepseekV3Config c = fp8_test_config();
  Generator g1{3, 0}, g2{3, 0}, g3{3, 0};
  nn::DeepseekV3ForCausalLM<bf16> gpu_fp8(c, g1), cpu_fp8(c, g2), cpu_plain(c, g3);  // the same weights
  gpu_fp8.to(gpu);
  ASSERT_EQ(nn::use_fp8_linears(gpu_fp8).size(), nn::use_fp8_linears(cpu_fp8).size());
  Generator data{9, 0};
  const auto ids = randint<std::int64_t>(0, c.vocab_size, {2, 128}, Device::cpu(), data);
  const auto targets = randint<std::int64_t>(0, c.vocab_size, {2, 128}, Device::cpu(), data);

  const auto out_gpu = gpu_fp8.forward_with_loss(to(ids, gpu), to(targets, gpu), -100);
  out_gpu.loss.backward();
  {
    const nn::MoEDispatchScope fused(nn::MoEDispatch::fused);  // the GPU's expert arithmetic, on the CPU
    const auto out_cpu = cpu_fp8.forward_with_loss(ids, targets, -100);
    out_cpu.loss.backward();
    const auto out_plain = cpu_plain.forward_with_loss(ids, targets, -100);
    out_plain.loss.backward();
    const double lg = static_cast<double>(on_cpu(out_gpu.loss).item()), lc = static_cast<double>(out_cpu.loss.item());
    EXPECT_LE(std::abs(lg - lc), 1e-2 * std::abs(lc)) << "GPU FP8 loss " << lg << ", CPU " << lc;
  }

  const auto pg = gpu_fp8.named_parameters(), pc = cpu_fp8.named_parameters(), pp = cpu_plain.named_parameters();
  ASSERT_EQ(pg.size(), pc.size());
  ASSERT_EQ(pp.size(), pc.size());
  double devices_e = 0.0, devices_n = 0.0, fp8_e = 0.0, fp8_n = 0.0;
  std::vector<std::pair<double, std::string>> table;
  for (std::size_t i = 0; i < pg.size(); ++i) {
    ASSERT_EQ(pg[i].first, pc[i].first);
    const Tensor<bf16> gg = pg[i].second.grad(), gc = pc[i].second.grad(), gp = pp[i].second.grad();
    ASSERT_EQ(gg.defined(), gc.defined()) << pg[i].first;
    if (!gc.defined()) continue;
    EXPECT_EQ(gg.device(), gpu) << pg[i].first;
    const ErrorStats d = relative_error(on_cpu(gg.detach()), gc), f = relative_error(gc, gp);
    devices_e += d.error_sq, devices_n += d.ref_sq, fp8_e += f.error_sq, fp8_n += f.ref_sq;
    const double devices = d.relative, fp8_own = f.relative;
    EXPECT_LE(devices, std::max(fp8_own, 6e-2)) << pg[i].first << ": GPU vs CPU " << devices << ", FP8 vs plain "
                                                << fp8_own;
    table.emplace_back(devices, str(pg[i].first, ": GPU vs CPU ", devices, ", the CPU's FP8 vs plain ", fp8_own));
  }
  const double devices = std::sqrt(devices_e / devices_n), fp8_own = std::sqrt(fp8_e / fp8_n);
  EXPECT_LE(devices, fp8_own) << "the devices' FP8 steps differ more than FP8 differs from no FP8";
  std::sort(table.rbegin(), table.rend());
  std::printf("FP8 step, GPU vs CPU: %.4f globally (the CPU's FP8 vs plain: %.4f); largest:\n", devices, fp8_own);
  for (std::size_t i = 0; i < table.size() && i < 8; ++i) std::printf("  %s\n", table[i].second.c_str());
}
