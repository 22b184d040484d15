// DeepSeek-V3 model (nn/deepseek_v3.hpp) and multi-token prediction (nn/mtp.hpp): Hugging Face
// parameter names for a 1 dense + 1 MoE layer model with MTP, tied embeddings, config checks, an
// MTP weight of 0 and short sequences, balancing across all MoE layers, gradients, and a tiny
// model overfitting one batch with AdamW. The logits and every loss piece against an independent
// plain-loop reference: test_deepseek_v3_reference.cpp.
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <kiln/nn/deepseek_v3.hpp>

#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using nn::DeepseekV3Config;
using nn::DeepseekV3ForCausalLM;

namespace {

DeepseekV3Config tiny_config() { return tiny_deepseek_config(0.2); }

// Columns [from, to) of a [B, S] id matrix, copied through plain vectors.
Tensor<std::int64_t> columns(const Tensor<std::int64_t>& ids, std::int64_t from, std::int64_t to) {
  const std::int64_t B = ids.shape()[0], S = ids.shape()[1];
  const auto v = ids.to_vector();
  std::vector<std::int64_t> out;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = from; s < to; ++s) out.push_back(v[static_cast<std::size_t>(b * S + s)]);
  return ids_from(out, B, to - from);
}

// Mean over counted rows of logsumexp(row) - row[target], in plain doubles.
double cross_entropy_ref(const Tensor<double>& logits, const Tensor<std::int64_t>& targets, std::int64_t ignore = -100) {
  const std::int64_t C = logits.shape().back();
  const auto l = logits.to_vector();
  const auto t = targets.to_vector();
  double total = 0;
  std::int64_t count = 0;
  for (std::size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore) continue;
    double mx = -INFINITY;
    for (std::int64_t c = 0; c < C; ++c) mx = std::max(mx, l[r * static_cast<std::size_t>(C) + static_cast<std::size_t>(c)]);
    double s = 0;
    for (std::int64_t c = 0; c < C; ++c) s += std::exp(l[r * static_cast<std::size_t>(C) + static_cast<std::size_t>(c)] - mx);
    total += mx + std::log(s) - l[r * static_cast<std::size_t>(C) + static_cast<std::size_t>(t[r])];
    ++count;
  }
  return total / static_cast<double>(count);
}

}  // namespace

TEST(DeepseekV3, StateNamesMatchHuggingFace) {
  const auto c = tiny_config();
  Generator gen{1, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  const std::int64_t H = 16;
  std::map<std::string, Shape> want{{"model.embed_tokens.weight", {32, H}}, {"model.norm.weight", {H}},
                                    {"lm_head.weight", {32, H}}};
  auto attention_and_norms = [&](const std::string& p) {
    want[p + "self_attn.q_a_proj.weight"] = {12, H};
    want[p + "self_attn.q_a_layernorm.weight"] = {12};
    want[p + "self_attn.q_b_proj.weight"] = {2 * (4 + 4), 12};
    want[p + "self_attn.kv_a_proj_with_mqa.weight"] = {8 + 4, H};
    want[p + "self_attn.kv_a_layernorm.weight"] = {8};
    want[p + "self_attn.kv_b_proj.weight"] = {2 * (4 + 4), 8};
    want[p + "self_attn.o_proj.weight"] = {H, 2 * 4};
    want[p + "input_layernorm.weight"] = {H};
    want[p + "post_attention_layernorm.weight"] = {H};
  };
  auto moe = [&](const std::string& p) {
    want[p + "mlp.gate.weight"] = {4, H};
    want[p + "mlp.gate.e_score_correction_bias"] = {4};
    for (int e = 0; e < 4; ++e) {
      const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
      want[q + "gate_proj.weight"] = {8, H};
      want[q + "up_proj.weight"] = {8, H};
      want[q + "down_proj.weight"] = {H, 8};
    }
    want[p + "mlp.shared_experts.gate_proj.weight"] = {8, H};
    want[p + "mlp.shared_experts.up_proj.weight"] = {8, H};
    want[p + "mlp.shared_experts.down_proj.weight"] = {H, 8};
  };
  attention_and_norms("model.layers.0.");
  want["model.layers.0.mlp.gate_proj.weight"] = {24, H};
  want["model.layers.0.mlp.up_proj.weight"] = {24, H};
  want["model.layers.0.mlp.down_proj.weight"] = {H, 24};
  attention_and_norms("model.layers.1.");
  moe("model.layers.1.");
  // The MTP module: a full (MoE) decoder layer plus enorm, hnorm, eh_proj and shared_head.norm.
  attention_and_norms("model.layers.2.");
  moe("model.layers.2.");
  want["model.layers.2.enorm.weight"] = {H};
  want["model.layers.2.hnorm.weight"] = {H};
  want["model.layers.2.eh_proj.weight"] = {H, 2 * H};
  want["model.layers.2.shared_head.norm.weight"] = {H};

  // Every entry is its own memory: no two overlap (an MoE layer's experts are views of one packed
  // block, side by side, nn/moe.hpp).
  std::map<std::string, Shape> got;
  std::map<const char*, std::pair<const char*, std::string>> ranges;  // start -> (end, name)
  for (auto& [name, t] : m.state()) {
    EXPECT_EQ(got.count(name), 0u) << name << " listed twice";
    got[name] = t.shape();
    EXPECT_TRUE(t.is_contiguous()) << name;
    const char* start = reinterpret_cast<const char*>(t.data());
    ranges[start] = {start + t.numel() * static_cast<std::int64_t>(sizeof(double)), name};
  }
  const char* end = nullptr;
  std::string previous;
  for (const auto& [start, entry] : ranges) {
    EXPECT_TRUE(end == nullptr || start >= end) << entry.second << " overlaps " << previous;
    if (end == nullptr || entry.first > end) end = entry.first, previous = entry.second;
  }
  EXPECT_EQ(got, want);
  // Routing biases are state but not parameters.
  std::set<std::string> params;
  for (auto& [name, t] : m.named_parameters()) params.insert(name);
  EXPECT_EQ(params.size(), want.size() - 2);
  EXPECT_EQ(params.count("model.layers.1.mlp.gate.e_score_correction_bias"), 0u);
  EXPECT_EQ(params.count("model.layers.2.mlp.gate.e_score_correction_bias"), 0u);
  // The copies of shared tensors that HF checkpoints carry for the MTP module.
  const auto shared = nn::mtp_shared_weight_names(c);
  ASSERT_EQ(shared.size(), 2u);
  EXPECT_EQ(shared[0], (std::pair<std::string, std::string>{"model.layers.2.embed_tokens.weight",
                                                            "model.embed_tokens.weight"}));
  EXPECT_EQ(shared[1], (std::pair<std::string, std::string>{"model.layers.2.shared_head.head.weight",
                                                            "lm_head.weight"}));

  // Layer kinds follow first_k_dense_replace and moe_layer_freq.
  EXPECT_FALSE(m.model.layers[0]->is_moe());
  EXPECT_TRUE(m.model.layers[1]->is_moe());
  EXPECT_TRUE(m.model.mtp_layers[0]->is_moe());
  ASSERT_EQ(m.moe_layers().size(), 2u);
  EXPECT_EQ(m.moe_layers()[0].first, 1);
  EXPECT_EQ(m.moe_layers()[1].first, 2);
}

TEST(DeepseekV3, TiedEmbeddingsAndNoMtp) {
  auto c = tiny_config();
  c.tie_word_embeddings = true;
  c.num_nextn_predict_layers = 0;
  c.first_k_dense_replace = 0;
  c.num_hidden_layers = 3;
  c.moe_layer_freq = 2;  // layers 0 and 2 MoE, layer 1 dense
  Generator gen{2, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  EXPECT_FALSE(m.lm_head);
  EXPECT_TRUE(m.model.layers[0]->is_moe());
  EXPECT_FALSE(m.model.layers[1]->is_moe());
  EXPECT_TRUE(m.model.layers[2]->is_moe());
  for (auto& [name, t] : m.state()) EXPECT_EQ(name.find("lm_head"), std::string::npos);
  const auto ids = randint<std::int64_t>(0, 32, {2, 5});
  const auto targets = randint<std::int64_t>(0, 32, {2, 5});
  const auto out = m.forward_with_loss(ids, targets);
  EXPECT_EQ(out.logits.shape(), (Shape{2, 5, 32}));
  EXPECT_EQ(out.mtp_loss.item(), 0.0);
  EXPECT_EQ(out.balance_loss.item(), 0.0);
  EXPECT_NEAR(out.main_loss.item(), cross_entropy_ref(out.logits, targets), 1e-12);
  EXPECT_EQ(out.loss.item(), out.main_loss.item());
  // Tied: logits = norm(h)·embed_tokensᵀ.
  EXPECT_LT(relative_error(m(ids), matmul(m.model.forward(ids, nn::positions_from(0, 5)),
                                          transpose(m.model.embed_tokens.weight, 0, 1))),
            1e-14);
}

// The config is checked once, before any layer exists: with no layers nothing else would check
// qk_rope_head_dim (forward's rope tables halve it) or the routing fields.
TEST(DeepseekV3, ConfigCheckedWithoutLayers) {
  Generator gen{9, 0};
  auto without_layers = [] {
    DeepseekV3Config c = tiny_config();
    c.num_hidden_layers = 0;
    c.num_nextn_predict_layers = 0;
    return c;
  };
  DeepseekV3Config c = without_layers();
  c.qk_rope_head_dim = 0;
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "MLA", "qk_rope_head_dim must be even and positive, got 0");
  c = without_layers();
  c.num_attention_heads = 0;
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "MLA", "heads 0");
  c = without_layers();
  c.n_group = 3;  // does not divide 4 experts
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "MoEGate", "multiple of n_group = 3");
  c = without_layers();
  c.vocab_size = 0;
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "DeepseekV3Model", "vocab_size (0)");
  c = without_layers();
  c.num_nextn_predict_layers = -1;
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "DeepseekV3Model", "num_nextn_predict_layers (-1)");
  c = without_layers();
  c.num_hidden_layers = std::int64_t(1) << 62;  // a config.json can say so: refused before any layer is built
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "DeepseekV3Model", "at most 1048576");
  c = without_layers();
  c.n_shared_experts = std::int64_t(1) << 62;
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "DeepseekV3Model", "overflows int64");
  c = without_layers();
  c.hidden_act = "gelu";
  EXPECT_KILN_ERROR((void)DeepseekV3ForCausalLM<double>(c, gen), "DeepseekV3Model", "hidden_act \"gelu\"");
  // A valid config with no layers is a model: embedding, norm, head.
  DeepseekV3ForCausalLM<double> m(without_layers(), gen);
  EXPECT_EQ(m.forward(ids_from({1, 2, 3}, 1, 3)).shape(), (Shape{1, 3, 32}));
}

// (The logits and loss pieces against a reference: test_deepseek_v3_reference.cpp.) λ = 0 skips
// the MTP modules: no MTP loss, and no balance term from their MoE layers; targets of the wrong
// shape are an error.
TEST(DeepseekV3, MtpWeightZeroSkipsTheModules) {
  auto c = tiny_config();
  c.num_nextn_predict_layers = 2;
  c.mtp_loss_weight = 0.0;
  c.seq_aux_loss_alpha = 0.01;
  Generator gen{3, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  const std::int64_t B = 2, S = 7;
  Generator data{99, 0};
  const auto tokens = randint<std::int64_t>(0, 32, {B, S + 1}, Device::cpu(), data);
  const auto ids = columns(tokens, 0, S), targets = columns(tokens, 1, S + 1);
  const auto out = m.forward_with_loss(ids, targets);
  EXPECT_EQ(out.mtp_loss.item(), 0.0);
  EXPECT_TRUE(out.mtp_depth_losses.empty());
  const double main_balance = m.model.forward_full(ids, nn::positions_from(0, S)).balance_loss.item();
  EXPECT_GT(main_balance, 0.0);
  EXPECT_DOUBLE_EQ(out.balance_loss.item(), main_balance);  // layer 1 only
  EXPECT_DOUBLE_EQ(out.loss.item(), out.main_loss.item() + main_balance);
  EXPECT_KILN_ERROR(m.forward_with_loss(ids, columns(targets, 0, S - 1)), "DeepseekV3ForCausalLM", "[2, 6]", "[2, 7]");
}

TEST(DeepseekV3, MtpSkipsDepthsLongerThanTheSequenceAndIgnoresTargets) {
  auto c = tiny_config();
  c.num_nextn_predict_layers = 2;
  Generator gen{4, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  // S = 2: depth 1 has one position, depth 2 none.
  const auto ids = ids_from({3, 4, 5, 6}, 2, 2);
  const auto targets = ids_from({4, -100, 6, 7}, 2, 2);
  const auto out = m.forward_with_loss(ids, targets);
  ASSERT_EQ(out.mtp_depth_losses.size(), 2u);
  EXPECT_FALSE(out.mtp_depth_losses[1].defined());
  // Depth 1 scores targets[:, 1:] = {-100, 7}: only the second sequence counts.
  EXPECT_TRUE(std::isfinite(out.mtp_depth_losses[0].item()));
  EXPECT_NEAR(out.mtp_loss.item(), c.mtp_loss_weight / 2 * out.mtp_depth_losses[0].item(), 1e-15);
  EXPECT_NEAR(out.main_loss.item(), cross_entropy_ref(out.logits, targets), 1e-12);
}

TEST(DeepseekV3, BalancingUpdatesEveryMoeLayer) {
  auto c = tiny_config();
  c.aux_loss_free_gamma = 0.001;
  Generator gen{5, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  const auto ids = randint<std::int64_t>(0, 32, {2, 6});
  const auto targets = randint<std::int64_t>(0, 32, {2, 6});
  m.forward_with_loss(ids, targets).loss.backward();
  const auto stats = m.load_stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].layer, 1);
  EXPECT_EQ(stats[0].load.total(), 2 * 6 * 2);  // every token of the main model routed K = 2 times
  EXPECT_EQ(stats[1].layer, 2);
  EXPECT_EQ(stats[1].load.total(), 2 * 5 * 2);  // the MTP block sees S - 1 positions
  std::vector<std::vector<double>> want;
  for (auto& s : stats) {
    std::vector<double> b(4);
    for (int i = 0; i < 4; ++i) {
      const double cnt = static_cast<double>(s.load.counts[static_cast<std::size_t>(i)]), mean = s.load.mean();
      b[static_cast<std::size_t>(i)] = cnt < mean ? 0.001 : (cnt > mean ? -0.001 : 0.0);
    }
    want.push_back(b);
    EXPECT_GE(s.max_violation(), 0.0);
  }
  // The biases get no gradient; the rule moves them by ±γ (or 0) and resets the counts.
  for (auto& [layer, moe] : m.moe_layers()) EXPECT_FALSE(moe->gate.e_score_correction_bias.grad().defined());
  m.update_balance();
  const auto layers = m.moe_layers();
  for (std::size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(layers[l].second->gate.e_score_correction_bias.to_vector(), want[l]);
    EXPECT_EQ(layers[l].second->batch_load().total(), 0);
  }
  // Inference forwards under NoGradGuard leave the batch load alone but report their own.
  {
    NoGradGuard no_grad;
    m(ids);
  }
  EXPECT_EQ(m.load_stats()[0].load.total(), 0);
  EXPECT_EQ(m.last_load_stats()[0].load.total(), 2 * 6 * 2);
}

TEST(DeepseekV3, GradcheckOfTheTrainingLoss) {
  auto c = tiny_config();
  c.hidden_size = 8;
  c.intermediate_size = 6;
  c.moe_intermediate_size = 3;
  c.kv_lora_rank = 4;
  c.q_lora_rank = 5;
  c.qk_rope_head_dim = 2;
  c.qk_nope_head_dim = 2;
  c.v_head_dim = 2;
  c.vocab_size = 11;
  c.seq_aux_loss_alpha = 0.05;
  c.initializer_range = 0.4;
  Generator gen{6, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  const auto ids = ids_from({1, 5, 2, 9, 3, 0, 7, 4, 10, 6}, 2, 5);
  const auto targets = ids_from({5, 2, 9, 3, 8, 7, 4, 10, 6, 1}, 2, 5);
  // Every parameter: embedding, attention, dense MLP, router, experts, MTP module, head (under the
  // sanitizers, -O0, 8 elements of each: all of them take a minute there; test_util.hpp).
  GradcheckOptions sampled;
  if (kSanitized) sampled.max_elements_per_input = 8;
  std::vector<Tensor<double>> inputs;
  for (auto& [name, t] : m.named_parameters()) inputs.push_back(t.detach());
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor<double>>& x) {
        std::size_t i = 0;
        m.visit("", [&](const std::string&, Tensor<double>* t, bool trainable) {
          if (trainable) *t = x[i++];
        });
        return m.forward_with_loss(ids, targets).loss;
      },
      inputs, sampled);
}

TEST(DeepseekV3, TinyModelOverfitsOneBatch) {
  auto c = tiny_config();
  c.initializer_range = 0.1;
  Generator gen{7, 0};
  DeepseekV3ForCausalLM<double> m(c, gen);
  Generator data{8, 0};
  const std::int64_t B = 2, S = 8;
  const auto tokens = randint<std::int64_t>(0, 32, {B, S + 1}, Device::cpu(), data);
  const auto ids = columns(tokens, 0, S), targets = columns(tokens, 1, S + 1);
  optim::AdamW<double> opt(m.parameters(), {.lr = 1e-2, .weight_decay = 0.0});
  double first = 0, main = 0, total = 0;
  int step = 0;
  for (; step < 300; ++step) {
    opt.zero_grad();
    const auto out = m.forward_with_loss(ids, targets);
    main = out.main_loss.item();
    total = out.loss.item();
    if (step == 0) first = main;
    if (total < 0.05) break;
    out.loss.backward();
    opt.step();
    m.update_balance();
  }
  EXPECT_GT(first, 3.0);  // about log(32) at the start
  EXPECT_LT(total, 0.05) << "after " << step << " steps (first loss " << first << ", total " << total << ")";
  std::cout << "overfit: main loss " << first << " -> " << main << ", total (main + MTP) " << total << " after "
            << step << " steps\n";
}
