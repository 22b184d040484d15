// DeepSeek-V3 (nn/deepseek_v3.hpp with nn/mla.hpp, nn/moe.hpp, nn/mtp.hpp, nn/balance.hpp) against
// the plain-loop reference of tests/support/deepseek_reference.hpp, which shares no code with
// kiln's ops or modules: it reads the parameters by their Hugging Face names and recomputes MLA,
// the dense and MoE layers, the head, the cross-entropies, the MTP modules and the sequence-wise
// balance loss one token at a time. Checked: the logits of forward() and forward_with_loss() for
// the tiny config of the model tests (q_lora_rank, 1 of 2 groups, top-2) and for a variant without
// q_lora_rank (q_proj, attention biases, 3 heads, odd head dims, 3 of 6 experts in 2 of 3 groups,
// two shared experts, dense layers between MoE layers, a dense and an MoE MTP block, tied
// embeddings, rms_norm_eps != 1e-6 so that the latent norms' own eps shows); and every loss piece
// of forward_with_loss with two MTP depths and ignored targets: main, each depth, MTP, balance,
// total. Parameters, norm weights and routing biases included, are random (randomize), so every
// norm weight and the bias's part in routing matter.
//
// Tolerance: both sides compute in double; they differ only in the order of operations (kiln's
// matrix products block and vectorise their sums, the reference adds left to right; softmax and
// logsumexp shift by the max at different points). Each step adds a few ulps (1e-16) times its
// condition number, a few layers deep: the differences seen are below 1e-15 relative. A slip in
// the math moves them far more: the latent norms with rms_norm_eps (1e-5) instead of 1e-6 move the
// variant's logits by 1e-5, and even a change of 1e-6 in one parameter element of the model moved
// some checked value by 1e-11 to 1e-6 relative when this test was written. 1e-12 lies between.
// Routing is discontinuous: the reference reports the closest selection boundary, required far
// above rounding, so that a choice flipped by rounding cannot pass for a bug (nor hide one).
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <kiln/nn/deepseek_v3.hpp>

#include "deepseek_reference.hpp"
#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using nn::DeepseekV3Config;
using nn::DeepseekV3ForCausalLM;

namespace {

namespace ref = kiln::testing::deepseek_ref;

constexpr double kTolerance = 1e-12;

// The tiny config of the model tests with two MTP depths and the balance loss on.
DeepseekV3Config tiny_config() {
  DeepseekV3Config c = tiny_deepseek_config(0.2);
  c.num_nextn_predict_layers = 2;
  c.mtp_loss_weight = 0.3;
  c.seq_aux_loss_alpha = 0.05;
  return c;
}

// No q_lora_rank, more heads, odd sizes; layers 0, 1 dense, 2 MoE; MTP blocks 3 (dense), 4 (MoE).
DeepseekV3Config variant_config() {
  DeepseekV3Config c;
  c.vocab_size = 23;
  c.hidden_size = 10;
  c.intermediate_size = 11;
  c.moe_intermediate_size = 5;
  c.num_hidden_layers = 3;
  c.num_nextn_predict_layers = 2;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 3;
  c.n_shared_experts = 2;
  c.n_routed_experts = 6;
  c.routed_scaling_factor = 1.7;
  c.kv_lora_rank = 7;
  c.q_lora_rank = std::nullopt;
  c.qk_rope_head_dim = 6;
  c.qk_nope_head_dim = 3;
  c.v_head_dim = 5;
  c.n_group = 3;
  c.topk_group = 2;
  c.num_experts_per_tok = 3;
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 2;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 50.0;  // large angles at small positions
  c.tie_word_embeddings = true;
  c.attention_bias = true;
  c.initializer_range = 0.2;
  c.mtp_loss_weight = 0.4;
  c.seq_aux_loss_alpha = 0.03;
  return c;
}

// A model with every parameter and buffer drawn at random, and B sequences of S + 1 tokens: ids
// the first S, targets the last S, with a few targets set to ignore_index (-100).
struct Setup {
  DeepseekV3Config config;
  std::unique_ptr<DeepseekV3ForCausalLM<double>> model;
  std::size_t B, S;
  std::vector<std::int64_t> ids, targets;
};

Setup make_setup(const DeepseekV3Config& c, std::uint64_t seed, std::size_t B, std::size_t S) {
  Setup s{c, nullptr, B, S, {}, {}};
  Generator gen{seed, 0};
  s.model = std::make_unique<DeepseekV3ForCausalLM<double>>(c, gen);
  randomize(*s.model, seed + 1, 0.4);
  // Routing biases of the size of the affinities' spread across tokens, so that both decide.
  for (auto& [layer, moe] : s.model->moe_layers()) {
    Vec bias = moe->gate.e_score_correction_bias.to_vector();
    for (double& v : bias) v *= 0.25;
    moe->gate.e_score_correction_bias = Tensor<double>::from_vector(bias, {c.n_routed_experts});
  }
  Generator data{seed + 2, 0};
  const auto tokens =
      randint<std::int64_t>(0, c.vocab_size, {static_cast<std::int64_t>(B), static_cast<std::int64_t>(S + 1)},
                            Device::cpu(), data)
          .to_vector();
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t i = 0; i < S; ++i) {
      s.ids.push_back(tokens[b * (S + 1) + i]);
      s.targets.push_back(tokens[b * (S + 1) + i + 1]);
    }
  s.targets[3] = -100;                  // main loss and depths 1, 2 (positions 3, 2, 1)
  s.targets[(B - 1) * S + S - 1] = -100;  // the last target of the last sequence: every depth
  return s;
}

Tensor<std::int64_t> as_tensor(const std::vector<std::int64_t>& v, std::size_t B, std::size_t S) {
  return ids_from(v, static_cast<std::int64_t>(B), static_cast<std::int64_t>(S));
}

Tensor<double> logits_tensor(const Setup& s, const Vec& logits) {
  return Tensor<double>::from_vector(
      logits, {static_cast<std::int64_t>(s.B), static_cast<std::int64_t>(s.S), s.config.vocab_size});
}

// The routing took paths that only a correct bias and group limit get right, and no choice sat
// within rounding of a boundary.
void expect_routing_exercised(const ref::RoutingStats& r) {
  EXPECT_GT(r.tokens, 0u);
  EXPECT_GT(r.bias_changed, 0u) << "the bias changed no choice: the test would not see it ignored";
  EXPECT_GT(r.group_changed, 0u) << "the group limit changed no choice: the test would not see it ignored";
  EXPECT_GT(r.min_margin, 1e-9) << "a routing choice within rounding of a tie";
}

void expect_logits_match(const Setup& s) {
  const ref::Output want = ref::forward(s.config, params_of(*s.model), s.ids, s.B, s.S);
  const Tensor<double> got = (*s.model)(as_tensor(s.ids, s.B, s.S));
  EXPECT_LE(relative_error(got, logits_tensor(s, want.logits)), kTolerance);
  expect_routing_exercised(want.routing);
}

void expect_near_relative(double got, double want, const std::string& what) {
  EXPECT_TRUE(std::isfinite(want)) << what;
  EXPECT_NEAR(got, want, kTolerance * std::abs(want)) << what;
}

void expect_losses_match(const Setup& s) {
  const auto& c = s.config;
  const ref::Output want = ref::forward(c, params_of(*s.model), s.ids, s.B, s.S, s.targets);
  const auto out = s.model->forward_with_loss(as_tensor(s.ids, s.B, s.S), as_tensor(s.targets, s.B, s.S));
  EXPECT_LE(relative_error(out.logits, logits_tensor(s, want.logits)), kTolerance);
  expect_near_relative(out.main_loss.item(), want.main_loss, "main loss");
  ASSERT_EQ(out.mtp_depth_losses.size(), static_cast<std::size_t>(c.num_nextn_predict_layers));
  ASSERT_EQ(want.depth_losses.size(), out.mtp_depth_losses.size());
  for (std::size_t k = 0; k < want.depth_losses.size(); ++k)
    expect_near_relative(out.mtp_depth_losses[k].item(), want.depth_losses[k], "MTP depth " + std::to_string(k + 1));
  expect_near_relative(out.mtp_loss.item(), want.mtp_loss, "MTP loss");
  expect_near_relative(out.balance_loss.item(), want.balance_loss, "balance loss");
  expect_near_relative(out.loss.item(), want.loss, "total loss");
  // Every piece is present and large enough to matter at this tolerance.
  EXPECT_GT(want.mtp_loss, 0.1);
  EXPECT_GT(want.balance_loss, 0.01);
  expect_routing_exercised(want.routing);
}

}  // namespace

TEST(DeepseekV3Reference, LogitsOfTheTinyConfig) { expect_logits_match(make_setup(tiny_config(), 4101, 3, 7)); }

TEST(DeepseekV3Reference, LogitsWithoutQLoraRank) { expect_logits_match(make_setup(variant_config(), 4201, 2, 9)); }

TEST(DeepseekV3Reference, LossPiecesOfTheTinyConfig) { expect_losses_match(make_setup(tiny_config(), 4301, 2, 9)); }

TEST(DeepseekV3Reference, LossPiecesWithoutQLoraRank) { expect_losses_match(make_setup(variant_config(), 4401, 3, 7)); }
