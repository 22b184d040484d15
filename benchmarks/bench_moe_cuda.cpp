// The MoE kernels (kernels/moe/) against a device-to-device copy of the same bytes, and the fused
// MoE layer (nn::MoE, MoEDispatch::fused) against the generic-op module (MoEDispatch::composed),
// in the same process.
//
// Part 1, memory-bound ops as users call them (output allocation included), bf16, at
//   DeepSeek-V3: 4096 tokens × hidden 7168, top-8 of 256 experts (8 groups, 4 kept);
//   kiln's big config: 16384 tokens (32 × 512) × hidden 768, top-2 of 8 experts (4 groups, 2 kept).
// Bytes counted: what must move at least. Routing reads the affinities and writes ids and gates;
// dispatch reads each token row once and writes its K copies; combine reads the N·K expert rows
// and the gates and writes the N token rows; their backward passes the same bytes the other way
// (plus, for the gates' gradient, the N·K rows and dy again). The layout sorts N·K ids (it is
// launch-bound at these sizes; its bytes are the ids in and the four maps out). ratio = GB/s over
// the copy's GB/s (1.0 = copy speed). The target: dispatch + combine ≥ 0.8.
//
// Part 2, one MoE layer forward + backward (bf16): the fused path (routing kernel, device layout,
// grouped GEMMs with the SwiGLU in their epilogues, combine; no host synchronisation), the same
// with the SwiGLU as its own kernel between them (nn::moe_swiglu_epilogue() off), and the composed
// one (host sort, one SwiGLU per expert through cuBLASLt, index_select and sums), at kiln's big
// config (one of its 6 MoE layers) and a DeepSeek-V3-style layer scaled to fit a quick run (hidden
// 2048, 32 experts of 768, top-8 of 4 kept groups of 8, 1 shared expert, 8192 tokens). Medians of
// 10 calls after 3 warm-up.
//
// Run: ./benchmarks/bench_moe_cuda (about 30 s on an H200, mostly building the modules);
// --ops runs part 1 only.
#include <cstdio>
#include <string>

#include <kiln/nn/moe.hpp>
#include <kiln/ops/moe.hpp>

#include "cuda_bench.hpp"

namespace {

using kiln::bf16;
using kiln::Tensor;
namespace bench = kiln::bench;

const kiln::Device gpu = kiln::Device::cuda(0);

struct Shape {
  const char* name;
  std::int64_t tokens, hidden, experts, top_k, n_group, topk_group;
};

void bandwidth_rows(bench::BandwidthBench& meter, const Shape& s) {
  const std::string shape = std::string(s.name) + " " + std::to_string(s.tokens) + "x" + std::to_string(s.hidden) +
                            " k" + std::to_string(s.top_k) + "/" + std::to_string(s.experts);
  const double n = static_cast<double>(s.tokens), k = static_cast<double>(s.top_k), h = static_cast<double>(s.hidden),
               e = static_cast<double>(s.experts);
  const Tensor<bf16> scores = kiln::to(kiln::cast<bf16>(kiln::sigmoid(kiln::randn<float>({s.tokens, s.experts}))), gpu);
  const Tensor<bf16> bias = kiln::zeros<bf16>({s.experts}, gpu);
  const kiln::MoeRouteOptions o{.top_k = s.top_k, .n_group = s.n_group, .topk_group = s.topk_group};
  meter.row("routing (op)", shape, "bf16", n * e * 2 + n * k * 10, [&] { (void)kiln::moe_route(scores, bias, o); },
            true);
  const kiln::MoeRoute<bf16> r = kiln::moe_route(scores, bias, o);
  meter.row("layout (op: radix sort + maps)", shape, "i64", n * k * 8 * 5, [&] { (void)kiln::moe_layout(r.experts, s.experts); },
            true);
  const kiln::MoeLayout l = kiln::moe_layout(r.experts, s.experts);
  const Tensor<bf16> x = kiln::to(kiln::cast<bf16>(kiln::randn<float>({s.tokens, s.hidden})), gpu);
  const Tensor<bf16> rows = kiln::moe_dispatch(x, l);
  const double dispatch_bytes = n * h * 2 + n * k * h * 2, combine_bytes = n * k * h * 2 + n * h * 2 + n * k * 2;
  meter.row("dispatch (op)", shape, "bf16", dispatch_bytes, [&] { (void)kiln::moe_dispatch(x, l); }, true);
  meter.row("combine (op)", shape, "bf16", combine_bytes, [&] { (void)kiln::moe_combine(rows, r.gates, l); }, true);
  meter.row("dispatch + combine (ops)", shape, "bf16", dispatch_bytes + combine_bytes, [&] {
    (void)kiln::moe_combine(kiln::moe_dispatch(x, l), r.gates, l);
  }, true);
  Tensor<bf16> xg = x.detach().requires_grad_(), rg = rows.detach().requires_grad_(),
               gg = r.gates.detach().requires_grad_();
  const Tensor<bf16> dy = kiln::to(kiln::cast<bf16>(kiln::randn<float>({s.tokens, s.hidden})), gpu);
  const Tensor<bf16> drows = kiln::to(kiln::cast<bf16>(kiln::randn<float>({s.tokens * s.top_k, s.hidden})), gpu);
  // The backward rows time the forward op and its backward together and count both passes' bytes:
  // dispatch's backward reads the N·K gradient rows and writes dx (the forward's bytes reversed);
  // combine's reads dy and the N·K expert rows (the gates' dot products) and writes the N·K row
  // gradients and the gates' (until 2026-12-07 only the forward's bytes were counted, which
  // understated these rows' ratios by about half).
  const double combine_backward_bytes = n * h * 2 + 2 * n * k * h * 2 + n * k * 2;
  meter.row("dispatch forward + backward (ops)", shape, "bf16", 2 * dispatch_bytes, [&] {
    xg.zero_grad();
    kiln::moe_dispatch(xg, l).backward(drows);
  }, true);
  meter.row("combine forward + backward (ops)", shape, "bf16", combine_bytes + combine_backward_bytes, [&] {
    rg.zero_grad();
    gg.zero_grad();
    kiln::moe_combine(rg, gg, l).backward(dy);
  }, true);
}

kiln::nn::DeepseekV3Config layer_config(std::int64_t hidden, std::int64_t experts, std::int64_t width,
                                        std::int64_t top_k, std::int64_t n_group, std::int64_t topk_group) {
  kiln::nn::DeepseekV3Config c;
  c.hidden_size = hidden;
  c.moe_intermediate_size = width;
  c.n_routed_experts = experts;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = top_k;
  c.n_group = n_group;
  c.topk_group = topk_group;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.seq_aux_loss_alpha = 0.0;
  return c;
}

void layer_row(bench::Timer& timer, const char* name, const kiln::nn::DeepseekV3Config& c, std::int64_t batch,
               std::int64_t seq) {
  kiln::Generator gen{1, 0};
  kiln::nn::MoE<bf16> moe(c, gen);
  moe.to(gpu);
  Tensor<bf16> x = kiln::to(kiln::cast<bf16>(kiln::randn<float>({batch, seq, c.hidden_size})), gpu).requires_grad_();
  const Tensor<bf16> dy = kiln::to(kiln::cast<bf16>(kiln::randn<float>({batch, seq, c.hidden_size})), gpu);
  auto step = [&] {
    moe.zero_grad();
    x.zero_grad();
    moe(x).backward(dy);
  };
  const bench::Runs runs{.warmup = 3, .timed = 10};
  kiln::nn::moe_dispatch_path() = kiln::nn::MoEDispatch::composed;
  const double composed = timer.median_us(step, runs);
  kiln::nn::moe_dispatch_path() = kiln::nn::MoEDispatch::fused;
  kiln::nn::moe_swiglu_epilogue() = false;
  const double separate = timer.median_us(step, runs);
  kiln::nn::moe_swiglu_epilogue() = true;
  const double fused = timer.median_us(step, runs);
  // FLOPs of the routed and shared experts (3 GEMMs each way counted as 2·m·n·k, backward twice
  // the forward) and of the router.
  const double tokens = static_cast<double>(batch * seq), h = static_cast<double>(c.hidden_size),
               w = static_cast<double>(c.moe_intermediate_size);
  const double flops = 3.0 * (2.0 * tokens * (c.num_experts_per_tok + c.n_shared_experts) * 3.0 * h * w +
                              2.0 * tokens * h * c.n_routed_experts);
  std::printf("%-34s %-34s %10.2f %10.2f %10.2f %8.2fx %9.1f\n", name,
              (std::to_string(batch) + "x" + std::to_string(seq) + " h" + std::to_string(c.hidden_size) + " e" +
               std::to_string(c.n_routed_experts) + "x" + std::to_string(c.moe_intermediate_size) + " k" +
               std::to_string(c.num_experts_per_tok))
                  .c_str(),
              composed / 1e3, separate / 1e3, fused / 1e3, composed / fused, flops / fused / 1e6);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const bool ops_only = argc > 1 && std::string(argv[1]) == "--ops";
  if (argc > 2 || (argc == 2 && !ops_only)) {
    std::fprintf(stderr, "usage: %s [--ops]   (--ops: the memory-bound ops only, not the MoE layers)\n", argv[0]);
    return 2;
  }
  if (!bench::open_device()) return 0;
  bench::BandwidthBench meter({.warmup = 3, .timed = 25}, {.name = 32, .shape = 34, .dtype = 5});
  meter.print_header();
  bandwidth_rows(meter, {"DeepSeek-V3", 4096, 7168, 256, 8, 8, 4});
  bandwidth_rows(meter, {"big", 16384, 768, 8, 2, 4, 2});
  if (ops_only) return 0;

  std::printf("\nMoE layer forward + backward, bf16 (composed: generic ops, host sort; fused: kernels/moe + "
              "grouped GEMMs, the SwiGLU as its own kernel (separate) or in the GEMMs' epilogues)\n");
  std::printf("%-34s %-34s %10s %10s %10s %9s %9s\n", "layer", "shape", "composed ms", "separate ms", "fused ms",
              "speedup", "fused TFLOP/s");
  bench::Timer timer(0);
  layer_row(timer, "big config MoE layer", layer_config(768, 8, 512, 2, 4, 2), 32, 512);
  layer_row(timer, "DeepSeek-V3-style (scaled)", layer_config(2048, 32, 768, 8, 8, 4), 4, 2048);
  return 0;
}
