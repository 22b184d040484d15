// LlamaForCausalLM and DeepseekV3ForCausalLM on CUDA against the same model on the CPU: small
// models of odd sizes (Llama: GQA, untied / tied / with biases; DeepSeek-V3: a dense and two MoE
// layers of 6 experts in 3 groups with a shared expert, q_lora_rank, an MTP module whose block is
// an MoE layer too, the sequence-wise balance loss on) with random parameters, built on the CPU
// and copied into a second instance that moves .to(gpu). Compared: the logits, the loss and its
// pieces (DeepSeek-V3: forward_with_loss's loss, main, MTP per depth and balance losses; Llama: the
// next-token cross-entropy) and, after backward of the loss, every parameter gradient by name
// (present on both devices and on the GPU), for float and bf16.
//
// Tolerances (relative Frobenius error):
//   float 1e-4: float on both devices, differing only in accumulation order and the last ulp of
//     exp / rsqrt (~1e-7..1e-6 per op, see test_modules_cuda.cpp); a model chains tens of ops
//     (two or three layers, MTP, cross-entropy) and the gradients of the first layers and the
//     embedding go back through all of them, so the differences grow to ~1e-5.
//   bf16 6e-2: every op's output is rounded to bf16 (at most 2^-8 relative); along the forward and the
//     backward of a model tens of roundings compound, and the two devices' roundings differ
//     wherever their float accumulations straddle a bf16 boundary. On the CPU these models' bf16
//     logits and gradients are up to 3.7e-2 from float64 (measured: the MTP block's q_b_proj
//     gradient, a small one reached through the whole model and the MTP head); the GPU's are as
//     far, not in the same direction. Losses are scalars averaged over many tokens: 1e-2.
// MoE routing is discontinuous (a token whose choice scores nearly tie may pick other experts on
// the other device; no tolerance covers that, and none is loosened for it):
//   float: the token ids are chosen (the first of a few seeds) such that every routing decision of
//     every MoE layer, MTP block included, has a margin of at least 2e-4 on the CPU model (the
//     devices' float scores differ by ~1e-6), and every expert gets tokens; the test also checks
//     that both devices routed every token to the same experts.
//   bf16: bf16 scores differ between the devices by up to ~1e-2, more than any margin random
//     hidden states leave, so the bf16 model routes every token to all 6 experts
//     (num_experts_per_tok = n_routed_experts, topk_group = n_group): no choice can flip, while the
//     gates, their normalisation, the dispatch, the experts, the shared expert and the balance
//     loss still depend on every token. Group-limited top-k routing in bf16 is covered by
//     NnModulesCuda.MoE, with inputs of large routing margins.
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/llama.hpp>
#include <kiln/ops/cross_entropy.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_test_util.hpp"
#include "nn_test_util.hpp"
#include "routing_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// See the file comment.
template <class T>
constexpr double kTol = std::is_same_v<T, bf16> ? 6e-2 : 1e-4;
template <class T>
constexpr double kLossTol = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;

// Replaces every parameter and buffer of m by normal(0, scale) draws rounded to T (norm weights
// and MoE routing biases included, so that they matter).
template <class T>
void randomize_as(nn::Module<T>& m, std::uint64_t seed, double scale) {
  Generator gen{seed, 0};
  m.visit("", [&](const std::string&, Tensor<T>* t, bool trainable) {
    Tensor<T> v = cast<T>(randn<float>(t->shape(), 0.0, scale, Device::cpu(), gen));
    if (trainable) v.requires_grad_();
    *t = v;
  });
}

// ref (on the CPU) gets dev's parameters and buffers, cast to R (R = T here); dev moves to the GPU.
template <class T, class R>
void mirror(nn::Module<T>& dev, nn::Module<R>& ref) {
  const auto s = dev.state();
  std::size_t i = 0;
  ref.visit("", [&](const std::string& name, Tensor<R>* t, bool trainable) {
    ASSERT_EQ(name, s[i].first);
    Tensor<R> v = clone(cast<R>(s[i++].second.detach()));
    if (trainable) v.requires_grad_();
    *t = v;
  });
  dev.to(gpu);
}

template <class T, class R>
void expect_close(const Tensor<T>& dev, const Tensor<R>& ref, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(dev.defined()) << "undefined on the GPU";
  ASSERT_TRUE(ref.defined()) << "undefined on the CPU";
  EXPECT_EQ(dev.device(), gpu);
  EXPECT_LE(relative_error(on_cpu(dev.detach()), ref.detach()), tol);
}

// Every parameter gradient, by name: present on both devices, on the GPU, within tol.
template <class T, class R>
void expect_gradients_match(const nn::Module<T>& dev, const nn::Module<R>& ref, double tol) {
  const auto d = dev.named_parameters();
  const auto r = ref.named_parameters();
  ASSERT_EQ(d.size(), r.size());
  for (std::size_t i = 0; i < d.size(); ++i) {
    SCOPED_TRACE("gradient of " + d[i].first);
    ASSERT_EQ(d[i].first, r[i].first);
    EXPECT_EQ(d[i].second.device(), gpu);
    const Tensor<T> gd = d[i].second.grad();
    const Tensor<R> gr = r[i].second.grad();
    EXPECT_TRUE(gr.defined()) << "no gradient on the CPU";
    EXPECT_TRUE(gd.defined()) << "no gradient on the GPU";
    if (gd.defined() && gr.defined()) expect_close(gd, gr, tol, d[i].first);
  }
}

// Token ids [B, S] and next-token targets (one ignored position) from `seed`.
std::pair<Tensor<std::int64_t>, Tensor<std::int64_t>> random_batch(std::int64_t B, std::int64_t S, std::int64_t vocab,
                                                                   std::uint64_t seed) {
  Generator gen{seed, 0};
  auto v = randint<std::int64_t>(0, vocab, {B, S + 1}, Device::cpu(), gen).to_vector();
  std::vector<std::int64_t> ids, targets;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < S; ++s) {
      ids.push_back(v[static_cast<std::size_t>(b * (S + 1) + s)]);
      targets.push_back(v[static_cast<std::size_t>(b * (S + 1) + s + 1)]);
    }
  targets[static_cast<std::size_t>(S + 2)] = -100;  // ignore_index
  return {ids_from(ids, B, S), ids_from(targets, B, S)};
}

// ---- Llama ---------------------------------------------------------------------------------------

// variant 0: untied, no biases; 1: tied embeddings; 2: attention and MLP biases.
nn::LlamaConfig llama_config(int variant) {
  nn::LlamaConfig c;
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.rope_theta = 500.0;
  c.tie_word_embeddings = variant == 1;
  c.attention_bias = c.mlp_bias = variant == 2;
  return c;
}

template <class T, class R = T>
void check_llama(int variant) {
  SCOPED_TRACE(str(dtype_of<T>, " variant ", variant));
  const nn::LlamaConfig c = llama_config(variant);
  Generator g{1, 0};
  nn::LlamaForCausalLM<T> dev(c, g);
  nn::LlamaForCausalLM<R> ref(c, g);
  randomize_as(dev, 10 + static_cast<std::uint64_t>(variant), 0.25);
  mirror(dev, ref);
  const auto [ids, targets] = random_batch(2, 11, c.vocab_size, 20 + static_cast<std::uint64_t>(variant));
  const Tensor<T> ld = dev(to(ids, gpu));
  const Tensor<R> lr = ref(ids);
  EXPECT_EQ(ld.shape(), (Shape{2, 11, c.vocab_size}));
  expect_close(ld, lr, kTol<T>, "logits");
  const Tensor<T> loss_d = cross_entropy(ld, to(targets, gpu));
  const Tensor<R> loss_r = cross_entropy(lr, targets);
  expect_close(loss_d, loss_r, kLossTol<T>, "loss");
  loss_d.backward();
  loss_r.backward();
  expect_gradients_match(dev, ref, kTol<T>);
}

// ---- DeepSeek-V3 ---------------------------------------------------------------------------------

// Layer 0 dense, layers 1-2 and the MTP block MoE. route_all: every token to every expert (bf16).
nn::DeepseekV3Config deepseek_config(bool route_all) {
  nn::DeepseekV3Config c;
  c.vocab_size = 37;
  c.hidden_size = 20;
  c.intermediate_size = 28;
  c.moe_intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 3;
  c.n_shared_experts = 1;
  c.n_routed_experts = 6;
  c.routed_scaling_factor = 2.5;
  c.kv_lora_rank = 8;
  c.q_lora_rank = 10;
  c.qk_rope_head_dim = 4;
  c.qk_nope_head_dim = 6;
  c.v_head_dim = 5;
  c.n_group = 3;
  c.topk_group = route_all ? 3 : 2;
  c.num_experts_per_tok = route_all ? 6 : 2;
  c.first_k_dense_replace = 1;
  c.seq_aux_loss_alpha = 0.01;
  c.mtp_loss_weight = 0.3;
  c.rope_theta = 100.0;
  return c;
}

// Over every MoE layer of m for ids: the smallest routing margin, and whether every expert of every
// layer got a token.
template <class T>
std::pair<double, bool> routing_check(nn::DeepseekV3ForCausalLM<T>& m, const Tensor<std::int64_t>& ids) {
  const nn::DeepseekV3Config& c = m.model.config;
  const std::vector<Tensor<T>> inputs = moe_inputs(m, ids);
  const auto layers = m.moe_layers();
  EXPECT_EQ(inputs.size(), layers.size());
  double margin = INFINITY;
  bool all_used = true;
  NoGradGuard no_grad;
  for (std::size_t l = 0; l < layers.size() && l < inputs.size(); ++l) {
    const nn::MoEGate<T>& gate = layers[l].second->gate;
    margin = std::min(margin, min_routing_margin(gate, inputs[l], c));
    std::vector<int> used(static_cast<std::size_t>(c.n_routed_experts), 0);
    for (const std::int64_t e : gate(inputs[l]).experts.to_vector()) used[static_cast<std::size_t>(e)] = 1;
    for (const int u : used) all_used = all_used && u;
  }
  return {margin, all_used};
}

// Each MoE layer's chosen experts per token (sorted within the token: the order of two chosen
// experts of nearly equal score changes only the summation order), as host vectors.
template <class T>
std::vector<std::vector<std::int64_t>> routes(nn::DeepseekV3ForCausalLM<T>& m, const Tensor<std::int64_t>& ids) {
  const std::vector<Tensor<T>> inputs = moe_inputs(m, ids);
  const auto layers = m.moe_layers();
  NoGradGuard no_grad;
  std::vector<std::vector<std::int64_t>> out;
  const auto K = static_cast<std::ptrdiff_t>(m.model.config.num_experts_per_tok);
  for (std::size_t l = 0; l < layers.size() && l < inputs.size(); ++l) {
    const Tensor<std::int64_t> experts = layers[l].second->gate(inputs[l]).experts;
    EXPECT_EQ(experts.device(), m.device());
    std::vector<std::int64_t> v = experts.to_vector();
    for (auto it = v.begin(); it != v.end(); it += K) std::sort(it, it + K);
    out.push_back(v);
  }
  return out;
}

template <class T, class R = T>
void check_deepseek(bool route_all) {
  SCOPED_TRACE(str(dtype_of<T>, route_all ? ", every token to every expert" : ", top-2 of 2 of 3 groups"));
  const nn::DeepseekV3Config c = deepseek_config(route_all);
  Generator g{2, 0};
  nn::DeepseekV3ForCausalLM<T> dev(c, g);
  nn::DeepseekV3ForCausalLM<R> ref(c, g);
  randomize_as(dev, 30, 0.3);
  // Gate weights of std 1 spread the affinity logits (std ~1.3), so that routing depends on the
  // token; routing biases of std 0.05 shift the choice without deciding it.
  Generator gate_gen{31, 0};
  for (auto& [index, moe] : dev.moe_layers()) {
    moe->gate.weight = cast<T>(randn<float>(moe->gate.weight.shape(), 0.0, 1.0, Device::cpu(), gate_gen)).requires_grad_();
    moe->gate.e_score_correction_bias = cast<T>(randn<float>({c.n_routed_experts}, 0.0, 0.05, Device::cpu(), gate_gen));
  }
  const std::int64_t B = 2, S = 11;

  // The first batch whose routing has a margin >= 2e-4 everywhere and uses every expert (checked
  // on the CPU, before the move).
  std::pair<Tensor<std::int64_t>, Tensor<std::int64_t>> batch;
  bool found = false;
  for (std::uint64_t seed = 40; seed < 240 && !found; ++seed) {
    batch = random_batch(B, S, c.vocab_size, seed);
    const auto [margin, all_used] = routing_check(dev, batch.first);
    found = margin >= 2e-4 && all_used;
  }
  ASSERT_TRUE(found) << "no batch among 200 seeds routes with margin 2e-4 and uses every expert";
  const auto& [ids, targets] = batch;
  mirror(dev, ref);

  // Both devices route every token of every MoE layer (MTP block included) to the same experts.
  EXPECT_EQ(routes(dev, to(ids, gpu)), routes(ref, ids)) << "the devices routed differently";
  for (auto& l : dev.moe_layers()) l.second->reset_load();
  for (auto& l : ref.moe_layers()) l.second->reset_load();

  const nn::DeepseekV3Output<T> od = dev.forward_with_loss(to(ids, gpu), to(targets, gpu));
  const nn::DeepseekV3Output<R> orf = ref.forward_with_loss(ids, targets);
  EXPECT_EQ(od.logits.shape(), (Shape{B, S, c.vocab_size}));
  expect_close(od.logits, orf.logits, kTol<T>, "logits");
  expect_close(od.loss, orf.loss, kLossTol<T>, "loss");
  expect_close(od.main_loss, orf.main_loss, kLossTol<T>, "main loss");
  expect_close(od.mtp_loss, orf.mtp_loss, kLossTol<T>, "MTP loss");
  expect_close(od.balance_loss, orf.balance_loss, kLossTol<T>, "balance loss");
  EXPECT_GT(static_cast<double>(orf.balance_loss.item()), 0.0);
  ASSERT_EQ(od.mtp_depth_losses.size(), 1u);
  ASSERT_EQ(orf.mtp_depth_losses.size(), 1u);
  expect_close(od.mtp_depth_losses[0], orf.mtp_depth_losses[0], kLossTol<T>, "MTP depth-1 loss");
  // The batch's expert load, counted on both devices alike.
  const auto ld = dev.load_stats(), lr = ref.load_stats();
  ASSERT_EQ(ld.size(), 3u);
  ASSERT_EQ(ld.size(), lr.size());
  for (std::size_t l = 0; l < ld.size(); ++l) EXPECT_EQ(ld[l].load.counts, lr[l].load.counts) << "layer " << ld[l].layer;

  od.loss.backward();
  orf.loss.backward();
  expect_gradients_match(dev, ref, kTol<T>);
}

}  // namespace

TEST(NnModelsCuda, Llama) {
  KILN_REQUIRE_GPU();
  for (int variant = 0; variant < 3; ++variant) {
    check_llama<float>(variant);
    check_llama<bf16>(variant);
  }
}

TEST(NnModelsCuda, DeepseekV3Float) {
  KILN_REQUIRE_GPU();
  check_deepseek<float>(false);
}

TEST(NnModelsCuda, DeepseekV3Bf16) {
  KILN_REQUIRE_GPU();
  check_deepseek<bf16>(true);
}
