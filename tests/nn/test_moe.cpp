// DeepSeek-V3 MoE (nn/moe.hpp) and load balancing (nn/balance.hpp): the layer against a per-token
// loop over experts written here in plain doubles, routing with the bias but gates without it,
// group-limited routing, the aux-loss-free sign rule, the sequence-wise balance loss, MaxVio,
// parameter names, and gradients (gradcheck at points away from routing ties).
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

#include <kiln/nn/moe.hpp>

#include "loopback_exchange.hpp"
#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;
using nn::DeepseekV3Config;
using nn::MoE;

namespace {

DeepseekV3Config tiny_config() {
  DeepseekV3Config c;
  c.hidden_size = 6;
  c.moe_intermediate_size = 5;
  c.n_routed_experts = 6;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 3;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  c.initializer_range = 0.5;  // large enough that affinities spread away from 0.5
  c.seq_aux_loss_alpha = 0.0;
  return c;
}

double sigmoid_ref(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// y = Wd (silu(Wg x) ⊙ (Wu x)) for one token, weights [out, in] row-major.
Vec swiglu_ref(const Vec& x, const Vec& wg, const Vec& wu, const Vec& wd, std::int64_t hidden, std::int64_t inter) {
  Vec a(static_cast<std::size_t>(inter));
  for (std::int64_t j = 0; j < inter; ++j) {
    double g = 0, u = 0;
    for (std::int64_t i = 0; i < hidden; ++i) {
      g += wg[static_cast<std::size_t>(j * hidden + i)] * x[static_cast<std::size_t>(i)];
      u += wu[static_cast<std::size_t>(j * hidden + i)] * x[static_cast<std::size_t>(i)];
    }
    a[static_cast<std::size_t>(j)] = g * sigmoid_ref(g) * u;
  }
  Vec y(static_cast<std::size_t>(hidden), 0.0);
  for (std::int64_t i = 0; i < hidden; ++i)
    for (std::int64_t j = 0; j < inter; ++j)
      y[static_cast<std::size_t>(i)] += wd[static_cast<std::size_t>(i * inter + j)] * a[static_cast<std::size_t>(j)];
  return y;
}

// One token's routing, written out from the DeepSeek-V3 description.
struct RouteRef {
  Vec scores;                      // [E] sigmoid affinities
  std::vector<std::int64_t> chosen;  // best choice score first
  Vec gates;
  double margin = INFINITY;  // smallest gap at a selection boundary (groups and experts)
};

RouteRef route_ref(const Vec& x, const Vec& w, const Vec& bias, const DeepseekV3Config& c) {
  const std::int64_t E = c.n_routed_experts, H = c.hidden_size, G = c.n_group, per = E / G;
  RouteRef r;
  Vec choice(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e) {
    double z = 0;
    for (std::int64_t i = 0; i < H; ++i) z += w[static_cast<std::size_t>(e * H + i)] * x[static_cast<std::size_t>(i)];
    r.scores.push_back(sigmoid_ref(z));
    choice[static_cast<std::size_t>(e)] = r.scores.back() + bias[static_cast<std::size_t>(e)];
  }
  // Group score: sum of the group's two largest choice scores.
  std::vector<std::pair<double, std::int64_t>> groups;
  for (std::int64_t g = 0; g < G; ++g) {
    Vec v(choice.begin() + g * per, choice.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    groups.emplace_back(v[0] + (per > 1 ? v[1] : 0.0), g);
  }
  std::sort(groups.begin(), groups.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<bool> kept(static_cast<std::size_t>(G), false);
  for (std::int64_t g = 0; g < c.topk_group; ++g) kept[static_cast<std::size_t>(groups[static_cast<std::size_t>(g)].second)] = true;
  if (c.topk_group < G)
    r.margin = groups[static_cast<std::size_t>(c.topk_group - 1)].first - groups[static_cast<std::size_t>(c.topk_group)].first;
  std::vector<std::pair<double, std::int64_t>> cand;
  for (std::int64_t e = 0; e < E; ++e)
    if (kept[static_cast<std::size_t>(e / per)]) cand.emplace_back(choice[static_cast<std::size_t>(e)], e);
  std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) { return a.first > b.first; });
  const auto K = static_cast<std::size_t>(c.num_experts_per_tok);
  double sum = 0;
  for (std::size_t k = 0; k < K; ++k) {
    r.chosen.push_back(cand[k].second);
    sum += r.scores[static_cast<std::size_t>(cand[k].second)];
  }
  if (K < cand.size()) r.margin = std::min(r.margin, cand[K - 1].first - cand[K].first);
  for (std::size_t k = 0; k < K; ++k) {
    double g = r.scores[static_cast<std::size_t>(r.chosen[k])];
    if (c.norm_topk_prob && K > 1) g /= sum;
    r.gates.push_back(g * c.routed_scaling_factor);
  }
  return r;
}

// The whole layer for x [N, H], token by token.
Vec moe_ref(const MoE<double>& moe, const Vec& x, std::int64_t n, const DeepseekV3Config& c) {
  auto st = named_state(moe);
  const std::int64_t H = c.hidden_size, I = c.moe_intermediate_size;
  const Vec w = st["gate.weight"].to_vector(), bias = st["gate.e_score_correction_bias"].to_vector();
  Vec y(static_cast<std::size_t>(n * H), 0.0);
  for (std::int64_t t = 0; t < n; ++t) {
    const Vec xt(x.begin() + t * H, x.begin() + (t + 1) * H);
    const RouteRef r = route_ref(xt, w, bias, c);
    Vec yt(static_cast<std::size_t>(H), 0.0);
    for (std::size_t k = 0; k < r.chosen.size(); ++k) {
      const std::string p = "experts." + std::to_string(r.chosen[k]) + ".";
      const Vec ye = swiglu_ref(xt, st[p + "gate_proj.weight"].to_vector(), st[p + "up_proj.weight"].to_vector(),
                                st[p + "down_proj.weight"].to_vector(), H, I);
      for (std::int64_t i = 0; i < H; ++i) yt[static_cast<std::size_t>(i)] += r.gates[k] * ye[static_cast<std::size_t>(i)];
    }
    if (c.n_shared_experts > 0) {
      const Vec ys = swiglu_ref(xt, st["shared_experts.gate_proj.weight"].to_vector(),
                                st["shared_experts.up_proj.weight"].to_vector(),
                                st["shared_experts.down_proj.weight"].to_vector(), H, I * c.n_shared_experts);
      for (std::int64_t i = 0; i < H; ++i) yt[static_cast<std::size_t>(i)] += ys[static_cast<std::size_t>(i)];
    }
    std::copy(yt.begin(), yt.end(), y.begin() + t * H);
  }
  return y;
}

void set_bias(MoE<double>& moe, const Vec& b) {
  moe.gate.e_score_correction_bias = Tensor<double>::from_vector(b, {static_cast<std::int64_t>(b.size())});
}

// A gate whose affinities for x = e_0 are exactly `scores`: weight[e][0] = logit(score_e).
void set_scores_for_unit_token(MoE<double>& moe, const Vec& scores, std::int64_t hidden) {
  const auto E = static_cast<std::int64_t>(scores.size());
  Vec w(static_cast<std::size_t>(E * hidden), 0.0);
  for (std::int64_t e = 0; e < E; ++e) {
    const double s = scores[static_cast<std::size_t>(e)];
    w[static_cast<std::size_t>(e * hidden)] = std::log(s / (1.0 - s));
  }
  moe.gate.weight = Tensor<double>::from_vector(w, {E, hidden}).requires_grad_();
}

Tensor<double> unit_token(std::int64_t hidden) {
  Vec x(static_cast<std::size_t>(hidden), 0.0);
  x[0] = 1.0;
  return Tensor<double>::from_vector(x, {1, hidden});
}

}  // namespace

TEST(MoE, ParameterNamesAndShapes) {
  const auto c = tiny_config();
  Generator gen{7, 0};
  MoE<double> moe(c, gen);
  std::map<std::string, Shape> expected{{"gate.weight", {6, 6}}, {"gate.e_score_correction_bias", {6}}};
  for (int e = 0; e < 6; ++e) {
    const std::string p = "experts." + std::to_string(e) + ".";
    expected[p + "gate_proj.weight"] = {5, 6};
    expected[p + "up_proj.weight"] = {5, 6};
    expected[p + "down_proj.weight"] = {6, 5};
  }
  expected["shared_experts.gate_proj.weight"] = {5, 6};
  expected["shared_experts.up_proj.weight"] = {5, 6};
  expected["shared_experts.down_proj.weight"] = {6, 5};
  std::map<std::string, Shape> got;
  for (auto& [name, t] : moe.state("mlp")) got[name.substr(4)] = t.shape();
  EXPECT_EQ(got, expected);
  // The bias is state (checkpointed) but not a parameter (never optimised).
  for (auto& [name, t] : moe.named_parameters()) EXPECT_EQ(name.find("e_score_correction_bias"), std::string::npos);
  EXPECT_EQ(moe.named_parameters().size(), expected.size() - 1);
}

TEST(MoE, NonContiguousInputAndNoSharedExperts) {
  auto c = tiny_config();
  c.n_shared_experts = 0;
  c.num_experts_per_tok = 3;
  Generator gen{5, 0};
  MoE<double> moe(c, gen);
  EXPECT_FALSE(moe.shared_experts);
  const auto x = transpose(randn<double>({6, 9}), 0, 1);  // [9, 6], non-contiguous
  const Vec ref = moe_ref(moe, x.to_vector(), 9, c);
  EXPECT_LT(relative_error(moe(x).to_vector(), ref), 1e-12);
}

TEST(MoE, BiasChoosesButGatesUseUnbiasedScores) {
  auto c = tiny_config();
  c.n_routed_experts = 4;
  c.n_group = 1;
  c.topk_group = 1;
  c.n_shared_experts = 0;
  c.hidden_size = 3;
  Generator gen{3, 0};
  MoE<double> moe(c, gen);
  const Vec s{0.7, 0.6, 0.5, 0.1};
  set_scores_for_unit_token(moe, s, 3);
  const auto x = unit_token(3);

  auto r = moe.gate(x);  // no bias: experts 0 and 1
  EXPECT_EQ(r.experts.to_vector(), (std::vector<std::int64_t>{0, 1}));
  EXPECT_NEAR(r.gates.at({0, 0}), 2.5 * 0.7 / 1.3, 1e-14);
  EXPECT_NEAR(r.gates.at({0, 1}), 2.5 * 0.6 / 1.3, 1e-14);

  // Bias +0.3 on expert 2: choice scores 0.7, 0.6, 0.8, 0.1 pick experts 2 and 0, but the gates
  // come from the unbiased 0.5 and 0.7.
  set_bias(moe, {0.0, 0.0, 0.3, 0.0});
  r = moe.gate(x);
  EXPECT_EQ(r.experts.to_vector(), (std::vector<std::int64_t>{2, 0}));
  EXPECT_NEAR(r.gates.at({0, 0}), 2.5 * 0.5 / 1.2, 1e-14);
  EXPECT_NEAR(r.gates.at({0, 1}), 2.5 * 0.7 / 1.2, 1e-14);

  // The layer output is then gate-weighted experts 2 and 0.
  auto st = named_state(moe);
  Vec ref(3, 0.0);
  const Vec gates{2.5 * 0.5 / 1.2, 2.5 * 0.7 / 1.2};
  const std::int64_t which[2] = {2, 0};
  for (int k = 0; k < 2; ++k) {
    const std::string p = "experts." + std::to_string(which[k]) + ".";
    const Vec ye = swiglu_ref({1, 0, 0}, st[p + "gate_proj.weight"].to_vector(), st[p + "up_proj.weight"].to_vector(),
                              st[p + "down_proj.weight"].to_vector(), 3, 5);
    for (int i = 0; i < 3; ++i) ref[static_cast<std::size_t>(i)] += gates[static_cast<std::size_t>(k)] * ye[static_cast<std::size_t>(i)];
  }
  EXPECT_LT(relative_error(moe(x).to_vector(), ref), 1e-13);

  // Without norm_topk_prob the gates are the scaled raw scores; with K = 1 they are never normalised.
  c.norm_topk_prob = false;
  MoE<double> raw(c, gen);
  set_scores_for_unit_token(raw, s, 3);
  r = raw.gate(x);
  EXPECT_NEAR(r.gates.at({0, 0}), 2.5 * 0.7, 1e-14);
  c.norm_topk_prob = true;
  c.num_experts_per_tok = 1;
  MoE<double> one(c, gen);
  set_scores_for_unit_token(one, s, 3);
  r = one.gate(x);
  EXPECT_EQ(r.experts.to_vector(), (std::vector<std::int64_t>{0}));
  EXPECT_NEAR(r.gates.at({0, 0}), 2.5 * 0.7, 1e-14);
}

TEST(MoE, GroupLimitedRoutingMasksGroups) {
  auto c = tiny_config();  // 6 experts in 3 groups {0,1} {2,3} {4,5}, K = 2
  c.n_shared_experts = 0;
  c.hidden_size = 2;
  Generator gen{3, 0};
  // Group scores (sum of the top two): 1.0, 1.5, 0.5. Group 0 holds the single best expert, but
  // group 1 wins on the sum.
  const Vec s{0.9, 0.1, 0.8, 0.7, 0.2, 0.3};
  const auto x = unit_token(2);
  const std::vector<std::pair<std::int64_t, std::vector<std::int64_t>>> cases{
      {1, {2, 3}},  // only group 1
      {2, {0, 2}},  // groups 1 and 0
      {3, {0, 2}},  // no restriction
  };
  for (auto& [topk_group, want] : cases) {
    c.topk_group = topk_group;
    MoE<double> moe(c, gen);
    set_scores_for_unit_token(moe, s, 2);
    EXPECT_EQ(moe.gate(x).experts.to_vector(), want) << "topk_group " << topk_group;
  }
  // The bias counts in the group scores too: +1.2 on expert 5 lifts group 2 to 1.5 + 0.2 = 1.7,
  // above group 1 (1.5).
  c.topk_group = 1;
  MoE<double> moe(c, gen);
  set_scores_for_unit_token(moe, s, 2);
  set_bias(moe, {0, 0, 0, 0, 0, 1.2});
  EXPECT_EQ(moe.gate(x).experts.to_vector(), (std::vector<std::int64_t>{5, 4}));
}

TEST(MoE, ConfigErrors) {
  Generator gen{1, 0};
  auto c = tiny_config();
  c.n_group = 4;
  EXPECT_KILN_ERROR(MoE<double>(c, gen), "MoEGate", "n_group");
  c = tiny_config();
  c.topk_group = 1;
  c.num_experts_per_tok = 3;
  EXPECT_KILN_ERROR(MoE<double>(c, gen), "MoEGate", "num_experts_per_tok");
  c = tiny_config();
  c.scoring_func = "softmax";
  EXPECT_KILN_ERROR(MoE<double>(c, gen), "MoEGate", "softmax");
  c = tiny_config();
  MoE<double> moe(c, gen);
  EXPECT_KILN_ERROR(moe(randn<double>({2, 5})), "MoE", "[2, 5]");
}

TEST(Balance, LoadCountsAndBiasFollowTheSignRule) {
  auto c = tiny_config();
  c.n_routed_experts = 4;
  c.n_group = 1;
  c.topk_group = 1;
  c.num_experts_per_tok = 1;
  c.hidden_size = 4;
  Generator gen{3, 0};
  MoE<double> moe(c, gen);
  // Token e_j prefers expert j (weight = 3·identity); tokens e_0, e_0, e_0, e_1 in one batch and
  // a second forward of e_0: loads 4, 1, 0, 0.
  Vec w(16, 0.0);
  for (int e = 0; e < 4; ++e) w[static_cast<std::size_t>(e * 4 + e)] = 3.0;
  moe.gate.weight = Tensor<double>::from_vector(w, {4, 4}).requires_grad_();
  auto token = [](int j) {
    Vec v(4, 0.0);
    v[static_cast<std::size_t>(j)] = 1.0;
    return v;
  };
  Vec xs;
  for (int j : {0, 0, 0, 1}) {
    const Vec t = token(j);
    xs.insert(xs.end(), t.begin(), t.end());
  }
  moe(Tensor<double>::from_vector(xs, {4, 4}));
  EXPECT_EQ(moe.last_load().counts, (std::vector<std::int64_t>{3, 1, 0, 0}));
  moe(Tensor<double>::from_vector(token(0), {1, 4}));
  EXPECT_EQ(moe.batch_load().counts, (std::vector<std::int64_t>{4, 1, 0, 0}));
  {
    NoGradGuard no_grad;  // evaluation forwards are not part of the training batch's load
    moe(Tensor<double>::from_vector(token(3), {1, 4}));
  }
  EXPECT_EQ(moe.last_load().counts, (std::vector<std::int64_t>{0, 0, 0, 1}));
  EXPECT_EQ(moe.batch_load().counts, (std::vector<std::int64_t>{4, 1, 0, 0}));
  // mean load 5/4: expert 0 overloaded (−γ), experts 1..3 under (+γ).
  EXPECT_DOUBLE_EQ(moe.batch_load().max_violation(), 4.0 / 1.25 - 1.0);
  const double gamma = 0.01;
  moe.update_bias(gamma);
  EXPECT_EQ(moe.gate.e_score_correction_bias.to_vector(), (Vec{-0.01, 0.01, 0.01, 0.01}));
  EXPECT_EQ(moe.batch_load().total(), 0);  // a new batch starts

  // Loads 2, 1, 1, 0 (mean 1): −γ, 0, 0, +γ on top of the previous bias.
  Vec xs2;
  for (int j : {0, 0, 1, 2}) {
    const Vec t = token(j);
    xs2.insert(xs2.end(), t.begin(), t.end());
  }
  moe(Tensor<double>::from_vector(xs2, {4, 4}));
  moe.update_bias(gamma);
  const Vec b = moe.gate.e_score_correction_bias.to_vector();
  EXPECT_DOUBLE_EQ(b[0], -0.02);
  EXPECT_DOUBLE_EQ(b[1], 0.01);
  EXPECT_DOUBLE_EQ(b[2], 0.01);
  EXPECT_DOUBLE_EQ(b[3], 0.02);
  // γ = 0 disables the rule.
  moe(Tensor<double>::from_vector(xs2, {4, 4}));
  moe.update_bias(0.0);
  EXPECT_EQ(moe.gate.e_score_correction_bias.to_vector(), b);
}

TEST(Balance, MaxViolation) {
  nn::ExpertLoad load(4);
  EXPECT_EQ(load.max_violation(), 0.0);
  load.add_routes({0, 1, 2, 3, 0, 1, 2, 3});
  EXPECT_EQ(load.max_violation(), 0.0);
  load.add_routes({0, 0});
  EXPECT_DOUBLE_EQ(load.max_violation(), 4.0 / 2.5 - 1.0);
  EXPECT_KILN_ERROR(load.add_routes({4}), "ExpertLoad", "4");
}

TEST(Balance, BiasReceivesNoGradient) {
  const auto c = tiny_config();
  Generator gen{9, 0};
  MoE<double> moe(c, gen);
  set_bias(moe, {0.1, 0.0, -0.1, 0.2, 0.0, 0.05});
  const auto x = randn<double>({5, 6}).requires_grad_();
  sum(square(moe(x))).backward();
  EXPECT_FALSE(moe.gate.e_score_correction_bias.requires_grad());
  EXPECT_FALSE(moe.gate.e_score_correction_bias.grad().defined());
  EXPECT_TRUE(moe.gate.weight.grad().defined());
  EXPECT_TRUE(x.grad().defined());
}

TEST(Balance, SequenceBalanceLossMatchesHandComputation) {
  auto c = tiny_config();
  c.seq_aux_loss_alpha = 0.01;
  Generator gen{13, 0};
  MoE<double> moe(c, gen);
  set_bias(moe, {0.0, 0.1, 0.0, -0.1, 0.05, 0.0});
  const std::int64_t B = 2, S = 5, E = 6, K = 2, H = 6;
  const auto x = randn<double>({B, S, H});
  const auto out = moe.forward_full(x);
  ASSERT_TRUE(out.balance_loss.defined());
  EXPECT_EQ(out.balance_loss.shape(), Shape{});

  auto st = named_state(moe);
  const Vec w = st["gate.weight"].to_vector(), bias = st["gate.e_score_correction_bias"].to_vector();
  const Vec xv = x.to_vector();
  double loss = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    Vec f(E, 0.0), p(E, 0.0);
    for (std::int64_t t = 0; t < S; ++t) {
      const Vec xt(xv.begin() + (b * S + t) * H, xv.begin() + (b * S + t + 1) * H);
      const RouteRef r = route_ref(xt, w, bias, c);
      const double total = std::accumulate(r.scores.begin(), r.scores.end(), 0.0);
      for (std::int64_t e = 0; e < E; ++e) p[static_cast<std::size_t>(e)] += r.scores[static_cast<std::size_t>(e)] / total / S;
      for (auto e : r.chosen) f[static_cast<std::size_t>(e)] += static_cast<double>(E) / (K * S);
    }
    for (std::int64_t e = 0; e < E; ++e) loss += 0.01 * f[static_cast<std::size_t>(e)] * p[static_cast<std::size_t>(e)] / B;
  }
  EXPECT_NEAR(out.balance_loss.item(), loss, 1e-15);

  // Off by default (α = 0).
  EXPECT_FALSE(MoE<double>(tiny_config(), gen).forward_full(x).balance_loss.defined());

  // Its gradient reaches the router only through P (f is a count of the fixed choice).
  const auto chosen = reshape(moe.gate(reshape(x, {B * S, H})).experts, {B, S, K});
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor<double>>& in) {
        return nn::sequence_balance_loss(reshape(sigmoid(matmul(in[1], transpose(in[0], 0, 1))), {B, S, E}),
                                         chosen, 0.5);
      },
      {clone(moe.gate.weight.detach()), clone(reshape(x, {B * S, H}))});
}

TEST(MoE, GradcheckWrtGateExpertsAndInput) {
  const auto c = tiny_config();
  Generator gen{21, 0};
  MoE<double> moe(c, gen);
  set_bias(moe, {0.02, -0.05, 0.1, 0.0, 0.03, -0.02});
  const auto x = randn<double>({2, 4, 6});

  // Stay away from ties: every selection boundary of every token has a clear gap.
  auto st = named_state(moe);
  const Vec w = st["gate.weight"].to_vector(), bias = st["gate.e_score_correction_bias"].to_vector();
  const Vec xv = x.to_vector();
  for (std::int64_t t = 0; t < 8; ++t) {
    const Vec xt(xv.begin() + t * 6, xv.begin() + (t + 1) * 6);
    ASSERT_GT(route_ref(xt, w, bias, c).margin, 1e-3) << "token " << t << " is near a routing tie";
  }

  // Inputs: x, gate.weight, and every expert weight (routed and shared). The lambda puts the
  // gradcheck leaves into the module's slots. Both dispatch paths: the composed ops and the fused
  // ones (their CPU reference loops here).
  std::vector<std::string> names;
  std::vector<Tensor<double>> inputs{x};
  for (auto& [name, t] : moe.named_parameters()) {
    names.push_back(name);
    inputs.push_back(t.detach());
  }
  for (const nn::MoEDispatch path : {nn::MoEDispatch::composed, nn::MoEDispatch::fused}) {
    SCOPED_TRACE(path == nn::MoEDispatch::fused ? "fused dispatch" : "composed dispatch");
    nn::MoEDispatchScope scope(path);
    EXPECT_GRADCHECK(
        [&](const std::vector<Tensor<double>>& in) {
          std::size_t i = 1;
          moe.visit("", [&](const std::string& name, Tensor<double>* slot, bool trainable) {
            if (!trainable) return;
            EXPECT_EQ(name, names[i - 1]);
            *slot = in[i++];
          });
          return moe(in[0]);
        },
        inputs);
    // With a residual (the decoder layer's): x + moe(x), the residual taken by the combine's sum
    // on the fused path (its shared expert's down_proj adds it), added after on the composed one.
    EXPECT_GRADCHECK(
        [&](const std::vector<Tensor<double>>& in) {
          std::size_t i = 1;
          moe.visit("", [&](const std::string&, Tensor<double>* slot, bool trainable) {
            if (trainable) *slot = in[i++];
          });
          return moe.forward_full(in[0], in[0]).output;
        },
        inputs);
    const auto r = randn<double>({2, 4, 6});
    EXPECT_LE(relative_error(moe.forward_full(x, r).output, add(r, moe(x))), 1e-14);
  }
}

TEST(MoE, DeterministicAndExpertsWithoutTokens) {
  auto c = tiny_config();
  c.n_group = 1;
  c.topk_group = 1;
  Generator gen{4, 0};
  MoE<double> moe(c, gen);
  // A huge bias on experts 0 and 1 sends every token there: the other experts get nothing and
  // their weights no gradient.
  set_bias(moe, {10.0, 10.0, 0, 0, 0, 0});
  const auto x = randn<double>({5, 6});
  const auto y1 = moe(x);
  EXPECT_EQ(moe.last_load().counts, (std::vector<std::int64_t>{5, 5, 0, 0, 0, 0}));
  EXPECT_EQ(moe(x).to_vector(), y1.to_vector());
  EXPECT_LT(relative_error(y1.to_vector(), moe_ref(moe, x.to_vector(), 5, c)), 1e-12);
  sum(y1).backward();
  EXPECT_TRUE(moe.experts[0]->gate_proj.weight.grad().defined());
  EXPECT_FALSE(moe.experts[3]->gate_proj.weight.grad().defined());
}

// Both dispatch paths — composed, and fused (routing kernel, device layout, grouped expert GEMMs,
// combine; here their CPU reference loops) — against the plain-double per-token loop over experts,
// and the fused path's gradients against the composed path's (finite differences:
// MoE.GradcheckWrtGateExpertsAndInput runs both paths).
TEST(MoE, BothDispatchPathsMatchPerTokenLoopOverExperts) {
  auto c = tiny_config();
  for (std::int64_t topk_group : {1, 2, 3}) {
    c.topk_group = topk_group;
    Generator gen{11, 0};
    MoE<double> moe(c, gen);
    set_bias(moe, {0.05, -0.1, 0.2, 0.0, -0.03, 0.12});
    for (const Shape& shape : {Shape{1, 6}, Shape{7, 6}, Shape{3, 11, 6}}) {
      SCOPED_TRACE(::testing::Message() << "topk_group " << topk_group << " shape " << kiln::str(shape));
      const auto x = randn<double>(shape);
      const Vec ref = moe_ref(moe, x.to_vector(), x.numel() / 6, c);
      std::map<std::string, Vec> grads[2];
      Vec dx[2];
      std::vector<std::int64_t> counts[2];
      for (int path = 0; path < 2; ++path) {
        nn::MoEDispatchScope scope(path == 0 ? nn::MoEDispatch::composed : nn::MoEDispatch::fused);
        moe.zero_grad();
        const auto xl = x.detach().requires_grad_();
        const auto y = moe(xl);
        EXPECT_EQ(y.shape(), x.shape());
        EXPECT_LT(relative_error(y.to_vector(), ref), 1e-12) << "path " << path;
        counts[path] = moe.last_load().counts;
        sum(mul(y, y)).backward();
        dx[path] = xl.grad().to_vector();
        for (auto& [name, t] : moe.named_parameters())
          grads[path][name] = t.grad().defined() ? t.grad().to_vector() : Vec(static_cast<std::size_t>(t.numel()), 0.0);
      }
      EXPECT_EQ(counts[0], counts[1]);
      EXPECT_LT(relative_error(dx[1], dx[0]), 1e-12);
      for (auto& [name, g] : grads[0]) EXPECT_LT(relative_error(grads[1][name], g), 1e-12) << name;
    }
  }
}

// The fused dispatch's load accounting: the batch load adds the training forwards (counted by the
// layout op), and the bias rule runs on those counts.
TEST(MoE, FusedDispatchLoads) {
  nn::MoEDispatchScope scope(nn::MoEDispatch::fused);
  const auto c = tiny_config();
  Generator gen{21, 0};
  MoE<double> moe(c, gen);
  set_bias(moe, {0.02, -0.05, 0.1, 0.0, 0.03, -0.02});
  const auto x = randn<double>({2, 4, 6});
  moe.reset_load();
  (void)moe(x);
  (void)moe(x);
  const std::vector<std::int64_t> once = moe.last_load().counts;
  EXPECT_EQ(std::accumulate(once.begin(), once.end(), std::int64_t{0}), 8 * c.num_experts_per_tok);
  std::vector<std::int64_t> twice = once;
  for (auto& v : twice) v *= 2;
  EXPECT_EQ(moe.batch_load().counts, twice);
  const Tensor<double> before = clone(moe.gate.e_score_correction_bias);
  nn::ExpertLoad load = moe.batch_load();
  moe.update_bias(0.01);
  nn::update_routing_bias(before, load, 0.01);
  EXPECT_EQ(moe.gate.e_score_correction_bias.to_vector(), before.to_vector());
  EXPECT_EQ(moe.batch_load().total(), 0);
}

// The expert parallel code path on one rank (an exchange with itself): counts and rows through the
// exchange, the local experts over offsets made on the host. Its outputs and gradients equal the
// local layer's bit for bit through both dispatch paths (the same sums in the same order).
TEST(MoE, ExpertParallelPathOnOneRankEqualsTheLocalLayer) {
  auto c = tiny_config();
  for (const nn::MoEDispatch path : {nn::MoEDispatch::composed, nn::MoEDispatch::fused}) {
    SCOPED_TRACE(path == nn::MoEDispatch::fused ? "fused dispatch" : "composed dispatch");
    nn::MoEDispatchScope scope(path);
    Generator g1{17, 0}, g2{17, 0};
    MoE<double> local(c, g1);
    auto exchange = std::make_shared<kiln::testing::LoopbackExchange<double>>(Device::cpu());
    MoE<double> spread(c, g2, exchange);
    EXPECT_EQ(spread.local_experts(), c.n_routed_experts);
    const auto x = randn<double>({3, 5, 6});
    Tensor<double> y[2], dx[2];
    for (int k = 0; k < 2; ++k) {
      MoE<double>& m = k == 0 ? local : spread;
      const auto xl = x.detach().requires_grad_();
      y[k] = m(xl);
      sum(mul(y[k], y[k])).backward();
      dx[k] = xl.grad();
    }
    EXPECT_EQ(exchange->count_exchanges, 1);
    EXPECT_EQ(exchange->row_exchanges, 2) << "rows out to the experts and back";
    EXPECT_EQ(y[1].to_vector(), y[0].to_vector());
    EXPECT_EQ(dx[1].to_vector(), dx[0].to_vector());
    const auto mine = spread.named_parameters(), ref = local.named_parameters();
    ASSERT_EQ(mine.size(), ref.size());
    for (std::size_t p = 0; p < mine.size(); ++p) {
      EXPECT_EQ(mine[p].first, ref[p].first);
      EXPECT_EQ(mine[p].second.grad().defined(), ref[p].second.grad().defined()) << mine[p].first;
      if (mine[p].second.grad().defined() && ref[p].second.grad().defined()) {
        EXPECT_EQ(mine[p].second.grad().to_vector(), ref[p].second.grad().to_vector()) << mine[p].first;
      }
    }
    EXPECT_EQ(spread.last_load().counts, local.last_load().counts);
    spread.update_bias(0.01);
    local.update_bias(0.01);
    EXPECT_EQ(spread.gate.e_score_correction_bias.to_vector(), local.gate.e_score_correction_bias.to_vector());
    EXPECT_KILN_ERROR((void)spread.stack_experts(), "MoE::stack_experts", "needs every routed expert in this process");
  }
}

// The routed experts' weights live in two blocks laid out as the grouped GEMMs read them
// ([E][gate | up][I][H] and [E][H][I]), at construction and after to(); the fused path's stacked
// weights are then views of the blocks (concat_as), not copies, and each expert's gradient is its
// slice of the stacked gradient.
TEST(MoE, ExpertWeightsShareOneBlockAndTheFusedPathCopiesNone) {
  auto c = tiny_config();
  Generator g1{23, 0};
  MoE<double> moe(c, g1);
  const auto& e0 = *moe.experts[0];
  const auto& e1 = *moe.experts[1];
  const std::int64_t I = c.moe_intermediate_size, H = c.hidden_size;
  EXPECT_EQ(e0.gate_proj.weight.storage(), e1.up_proj.weight.storage());
  EXPECT_EQ(e0.up_proj.weight.offset(), e0.gate_proj.weight.offset() + I * H);
  EXPECT_EQ(e1.gate_proj.weight.offset(), e0.gate_proj.weight.offset() + 2 * I * H);
  EXPECT_EQ(e1.down_proj.weight.offset(), e0.down_proj.weight.offset() + H * I);
  EXPECT_NE(e0.down_proj.weight.storage(), e0.gate_proj.weight.storage());
  for (const auto& p : moe.parameters()) EXPECT_TRUE(p.requires_grad());

  // concat_as over the blocks is a view; over parts that do not lie back to back, a copy.
  std::vector<Tensor<double>> in;
  for (const auto& ex : moe.experts) in.push_back(ex->gate_proj.weight), in.push_back(ex->up_proj.weight);
  const auto E = static_cast<std::int64_t>(moe.experts.size());
  const Tensor<double> w_in = concat_as(in, {E, 2 * I, H});
  EXPECT_EQ(w_in.storage(), e0.gate_proj.weight.storage());
  EXPECT_EQ(w_in.to_vector(), reshape(cat(in, 0), {E, 2 * I, H}).to_vector());
  std::swap(in[0], in[1]);
  const Tensor<double> copied = concat_as(in, {E, 2 * I, H});
  EXPECT_NE(copied.storage(), e0.gate_proj.weight.storage());
  EXPECT_EQ(copied.to_vector(), reshape(cat(in, 0), {E, 2 * I, H}).to_vector());

  // Gradients through the view: each part gets its slice (against the copying path's).
  const Tensor<double> upstream = randn<double>({E, 2 * I, H});
  std::swap(in[0], in[1]);
  sum(mul(concat_as(in, {E, 2 * I, H}), upstream)).backward();
  std::vector<Tensor<double>> grads_view;
  for (const auto& t : in) grads_view.push_back(clone(t.grad()));
  moe.zero_grad();
  sum(mul(reshape(cat(in, 0), {E, 2 * I, H}), upstream)).backward();
  for (std::size_t i = 0; i < in.size(); ++i) EXPECT_EQ(grads_view[i].to_vector(), in[i].grad().to_vector()) << i;

  // A move to where the layer already is changes nothing (an optimizer keeps its tensors).
  const Tensor<double> held = e1.up_proj.weight;
  moe.to(Device::cpu());
  EXPECT_EQ(moe.experts[1]->up_proj.weight.data(), held.data());
  EXPECT_KILN_ERROR((void)concat_as(in, {E, 2 * I, H + 1}), "concat_as", "holds");
}
