// Expert load balancing for DeepSeek-V3 MoE layers (DeepSeek-V3 report, §2.1.2):
//
// - Auxiliary-loss-free balancing. Each routed expert i has a bias b_i that is added to its
//   affinity only to choose the top-k experts (the gates use the unbiased affinities). After each
//   optimizer step, b_i += γ·sign(mean_load − load_i) over the token counts of the whole batch:
//   overloaded experts become less attractive, underloaded ones more. The bias is a buffer and
//   never receives a gradient.
// - The complementary sequence-wise balance loss (eq. 17-20), for one sequence of T tokens:
//     s'_{i,t} = s_{i,t} / Σ_j s_{j,t}                              (normalised affinities)
//     f_i = N_r / (K_r T) · Σ_t 1(expert i is among token t's chosen experts)
//     P_i = 1/T · Σ_t s'_{i,t}
//     L_bal = α Σ_i f_i P_i
//   averaged over the sequences of the batch. f_i is a count (no gradient); P_i carries the
//   gradient to the router. kiln counts the experts each token was actually routed to (chosen with
//   the bias and the group limit), as Hugging Face's DeepSeek code does with its topk_idx; eq. 18
//   writes f_i over Topk of the unbiased affinities, which differs where the bias or the group limit
//   changed a choice (about 1-2% of the loss in tests/nn/test_deepseek_v3_reference.cpp's configs).
// - Load statistics: the count per expert and MaxVio = max_i load_i / mean_load − 1 (0 for a
//   perfectly balanced layer).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/gather.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::nn {

// How many token→expert routes each routed expert of one MoE layer received.
struct ExpertLoad {
  std::vector<std::int64_t> counts;  // [n_routed_experts]

  ExpertLoad() = default;
  explicit ExpertLoad(std::int64_t experts) : counts(static_cast<std::size_t>(experts), 0) {}

  std::int64_t experts() const { return static_cast<std::int64_t>(counts.size()); }
  std::int64_t total() const {
    std::int64_t n = 0;
    for (auto c : counts) n += c;
    return n;
  }
  // Routes per expert if they were spread evenly.
  double mean() const { return counts.empty() ? 0.0 : static_cast<double>(total()) / static_cast<double>(counts.size()); }
  // MaxVio = max_i load_i / mean load − 1; 0 when nothing was routed.
  double max_violation() const {
    const double m = mean();
    if (m == 0.0) return 0.0;
    return static_cast<double>(*std::max_element(counts.begin(), counts.end())) / m - 1.0;
  }
  // Adds routes given as expert ids (each in [0, experts)).
  void add_routes(const std::vector<std::int64_t>& chosen) {
    for (auto e : chosen) {
      check(e >= 0 && e < experts(), "ExpertLoad", "expert id ", e, " is out of range for ", experts(), " experts");
      ++counts[static_cast<std::size_t>(e)];
    }
  }
  void add(const ExpertLoad& other) {
    check(other.experts() == experts(), "ExpertLoad", "cannot add the load of ", other.experts(), " experts to ",
          experts(), " experts");
    for (std::size_t i = 0; i < counts.size(); ++i) counts[i] += other.counts[i];
  }
  void reset() { std::fill(counts.begin(), counts.end(), 0); }
};

// One MoE layer's load, as reported by a model (layer = its index in model.layers).
struct LayerLoad {
  std::int64_t layer = 0;
  ExpertLoad load;
  double max_violation() const { return load.max_violation(); }
};

// The aux-loss-free update, in place: bias_i += γ·sign(mean_load − load_i), with sign(0) = 0.
// Reads the (small) bias through the host, so it works for a bias on any device.
template <class T>
void update_routing_bias(const Tensor<T>& bias, const ExpertLoad& load, double gamma) {
  check_defined("update_routing_bias", bias);
  check(bias.dim() == 1 && bias.numel() == load.experts(), "update_routing_bias", "bias of shape ", bias.shape(),
        " does not match the load of ", load.experts(), " experts");
  check(bias.is_contiguous(), "update_routing_bias", "the bias must be contiguous, got strides ", bias.strides());
  if (gamma == 0.0 || load.total() == 0) return;
  const double mean = load.mean();
  std::vector<T> b = bias.to_vector();
  for (std::size_t i = 0; i < b.size(); ++i) {
    const double c = static_cast<double>(load.counts[i]);
    const double sign = c < mean ? 1.0 : (c > mean ? -1.0 : 0.0);
    b[i] = convert<T>(static_cast<double>(b[i]) + gamma * sign);
  }
  copy_bytes(bias.data(), bias.device(), b.data(), Device::cpu(), b.size() * sizeof(T));
}

// The sequence-wise balance loss α · mean_b Σ_i f_{b,i} P_{b,i} of eq. 17-20.
//   scores [B, S, E]: the routing affinities s (sigmoid, before any bias), differentiable;
//   chosen [B, S, K]: the experts each token was routed to.
// Returns a scalar.
template <class T>
Tensor<T> sequence_balance_loss(const Tensor<T>& scores, const Tensor<std::int64_t>& chosen, double alpha) {
  const char* op = "sequence_balance_loss";
  check_defined(op, scores, chosen);
  check(scores.dim() == 3 && chosen.dim() == 3 && chosen.shape()[0] == scores.shape()[0] &&
            chosen.shape()[1] == scores.shape()[1],
        op, "needs scores [B, S, E] and chosen experts [B, S, K], got shapes ", scores.shape(), " and ",
        chosen.shape());
  const std::int64_t b = scores.shape()[0], s = scores.shape()[1], e = scores.shape()[2], k = chosen.shape()[2];
  check(s > 0 && k > 0, op, "needs at least one token and one chosen expert, got shapes ", scores.shape(), " and ",
        chosen.shape());
  // f: routes per expert and sequence, scaled so that a uniform spread gives f_i = 1.
  Tensor<T> f;
  {
    NoGradGuard no_grad;
    const Tensor<std::int64_t> routes = reshape(chosen.detach(), {b, s * k});
    const Tensor<T> counts = scatter_add(zeros<T>({b, e}, scores.device()), 1, routes,
                                         ones<T>({b, s * k}, scores.device()));
    f = mul(counts, static_cast<double>(e) / static_cast<double>(k * s));
  }
  const Tensor<T> normalised = div(scores, sum(scores, {-1}, true));
  const Tensor<T> p = mean(normalised, {1});                  // [B, E]
  return mul(mean(sum(mul(f, p), {1})), alpha);
}

}  // namespace kiln::nn
