// MoE routing margins for the GPU-against-CPU tests (tests/nn/test_modules_cuda.cpp,
// test_models_cuda.cpp, tests/train/test_trainer_cuda.cpp). Routing is discontinuous: a token whose
// scores nearly tie at a selection boundary may pick other experts on the other device, which no
// tolerance covers. These tests therefore pick inputs whose every routing decision has a margin far
// above the devices' differences, measured here in double from the exact inputs and weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <kiln/nn/deepseek_v3.hpp>

#include "nn_test_util.hpp"

namespace kiln::testing {

template <class T>
Vec doubles(const Tensor<T>& t) {
  Vec out;
  for (const T v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// The smallest gap at a boundary of one token's routing (nn/moe.hpp), in double: between the last
// kept and the first dropped group score, and between the K-th and the (K+1)-th choice score among
// the kept groups' experts. x [hidden], w [E, hidden], bias [E]. Infinite when nothing is chosen
// (all groups kept, all experts chosen).
inline double routing_margin(const double* x, const Vec& w, const Vec& bias, const nn::DeepseekV3Config& c) {
  const std::int64_t E = c.n_routed_experts, H = c.hidden_size, G = c.n_group, per = E / G;
  Vec choice(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e) {
    double z = 0.0;
    for (std::int64_t i = 0; i < H; ++i) z += w[static_cast<std::size_t>(e * H + i)] * x[i];
    choice[static_cast<std::size_t>(e)] = 1.0 / (1.0 + std::exp(-z)) + bias[static_cast<std::size_t>(e)];
  }
  double margin = INFINITY;
  std::vector<std::pair<double, std::int64_t>> groups;
  for (std::int64_t g = 0; g < G; ++g) {
    Vec v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    groups.emplace_back(v[0] + (per > 1 ? v[1] : 0.0), g);
  }
  std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<bool> kept(static_cast<std::size_t>(G), c.topk_group >= G);
  for (std::int64_t g = 0; g < c.topk_group; ++g) kept[static_cast<std::size_t>(groups[static_cast<std::size_t>(g)].second)] = true;
  if (c.topk_group < G)
    margin = groups[static_cast<std::size_t>(c.topk_group - 1)].first - groups[static_cast<std::size_t>(c.topk_group)].first;
  Vec candidates;
  for (std::int64_t e = 0; e < E; ++e)
    if (kept[static_cast<std::size_t>(e / per)]) candidates.push_back(choice[static_cast<std::size_t>(e)]);
  std::sort(candidates.rbegin(), candidates.rend());
  const auto K = static_cast<std::size_t>(c.num_experts_per_tok);
  if (K < candidates.size()) margin = std::min(margin, candidates[K - 1] - candidates[K]);
  return margin;
}

// The input of every MoE layer ([N, hidden]; model.layers in order, then the MTP blocks: the order
// of moe_layers()) for ids [B, S]: forward_with_loss retraced with the public modules, no graph.
template <class T>
std::vector<Tensor<T>> moe_inputs(nn::DeepseekV3ForCausalLM<T>& m, const Tensor<std::int64_t>& ids) {
  NoGradGuard no_grad;
  const nn::DeepseekV3Config& c = m.model.config;
  std::vector<Tensor<T>> out;
  auto tables = [&](std::int64_t n, Device device) {
    return nn::rope_tables_on<T>(nn::positions_from(0, n), c.qk_rope_head_dim, c.rope_theta, device);
  };
  auto through = [&](nn::DeepseekV3DecoderLayer<T>& layer, const Tensor<T>& h, const auto& t) {
    if (layer.moe) {
      const Tensor<T> a = add(h, layer.self_attn.forward(layer.input_layernorm(h), t));
      out.push_back(reshape(layer.post_attention_layernorm(a), {-1, c.hidden_size}));
    }
    return layer.forward_full(h, t).hidden;
  };
  const std::int64_t S = ids.size(1);
  Tensor<T> h = m.model.embed_tokens(ids);
  const auto main_tables = tables(S, h.device());
  for (auto& layer : m.model.layers) h = through(*layer, h, main_tables);
  for (std::size_t k = 1; k <= m.model.mtp_layers.size() && static_cast<std::int64_t>(k) < S; ++k) {
    auto& mtp = *m.model.mtp_layers[k - 1];
    const std::int64_t n = S - static_cast<std::int64_t>(k);
    const Tensor<T> embedded = m.model.embed_tokens(narrow(ids, 1, static_cast<std::int64_t>(k), n));
    const Tensor<T> merged =
        mtp.eh_proj(cat(std::vector<Tensor<T>>{mtp.enorm(embedded), mtp.hnorm(narrow(h, 1, 0, n))}, -1));
    h = through(mtp, merged, tables(n, h.device()));
  }
  return out;
}

// The smallest routing margin over the tokens of inputs [N, hidden] through `gate`.
template <class T>
double min_routing_margin(const nn::MoEGate<T>& gate, const Tensor<T>& inputs, const nn::DeepseekV3Config& c) {
  const Vec w = doubles(gate.weight), bias = doubles(gate.e_score_correction_bias), x = doubles(inputs);
  const auto H = static_cast<std::size_t>(c.hidden_size);
  double margin = INFINITY;
  for (std::size_t n = 0; n * H < x.size(); ++n) margin = std::min(margin, routing_margin(x.data() + n * H, w, bias, c));
  return margin;
}

}  // namespace kiln::testing
