// A plain-loop DeepSeek-V3 in double, independent of kiln's ops and modules: it reads a model's
// parameters by their Hugging Face names (Params, nn_test_util.hpp) and computes, one token at a
// time with std::vector<double> loops,
//   - the decoder of Hugging Face's DeepseekV3ForCausalLM (modeling_deepseek.py shipped with the
//     checkpoints): embedding lookup; per layer h += MLA(input_layernorm(h)) and
//     h += MLP(post_attention_layernorm(h)), the MLP a dense SwiGLU or the MoE layer by HF's rule
//     (layer >= first_k_dense_replace and layer % moe_layer_freq == 0); final norm and lm_head
//     (the embedding when tie_word_embeddings);
//   - MLA as DeepseekV3Attention computes it: q = q_b_proj(q_a_layernorm(q_a_proj(x))) (q_proj(x)
//     without q_lora_rank), per head [q_nope | q_pe]; kv_a_proj_with_mqa(x) = [compressed_kv |
//     k_pe]; kv = kv_b_proj(kv_a_layernorm(compressed_kv)), per head [k_nope | v]; q_pe and the
//     one shared k_pe rotated by HF's DeepSeek rope (below); score = q·k / sqrt(dn + dr), causal
//     softmax, o_proj of the heads' outputs. q_a_layernorm and kv_a_layernorm have eps 1e-6 (HF
//     builds them with the default eps, not rms_norm_eps). No yarn: kiln refuses rope_scaling
//     (io/config.hpp), so the softmax scale has no mscale factor;
//   - the MoE layer of the "noaux_tc" MoEGate: s = sigmoid(gate.weight·x); choice scores s + b
//     (b = e_score_correction_bias) used only to choose: groups ranked by the sum of their two
//     largest choice scores, the best topk_group kept, the num_experts_per_tok best experts of
//     those; gates = the unbiased s of the chosen experts, divided by their sum (+1e-20) when
//     norm_topk_prob and K > 1, times routed_scaling_factor; plus the shared experts (one SwiGLU
//     of width n_shared_experts·moe_intermediate_size);
//   - the training losses that kiln's forward_with_loss documents (nn/deepseek_v3.hpp, nn/mtp.hpp,
//     nn/balance.hpp): next-token cross-entropy (mean over targets != ignore_index); the MTP
//     modules of the DeepSeek-V3 report §2.2, module k = model.layers.{L + k - 1}: at position i,
//     eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]) (embedding first, as the checkpoints'
//     eh_proj and vLLM order it), one transformer block over positions 0..S-k-1, the shared head
//     lm_head(shared_head.norm(h^k_i)), cross-entropy against t_{i+k+1}; h^0 the main model's
//     last hidden state before its final norm; L_MTP = λ/D Σ_k CE_k; and the sequence-wise balance
//     loss α·mean over sequences of Σ_i f_i P_i (eq. 17-20; f from the experts actually chosen) of
//     every MoE layer, MTP blocks included.
// The routing diagnostics (Output::routing) say how often the bias and the group limit changed
// a choice, so a test can check that those paths were exercised, and how close the closest
// selection boundary came (a choice flipped by rounding would otherwise look like a bug).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <kiln/nn/config.hpp>

#include "nn_test_util.hpp"

namespace kiln::testing::deepseek_ref {

using Ids = std::vector<std::int64_t>;
using Seq = std::vector<Vec>;  // one sequence: a vector per position

// HF builds q_a_layernorm and kv_a_layernorm with DeepseekV3RMSNorm's default eps.
inline constexpr double kLatentNormEps = 1e-6;

struct RoutingStats {
  std::size_t tokens = 0;         // routed tokens, all MoE layers
  std::size_t bias_changed = 0;   // chosen set differs from the same rule without the bias
  std::size_t group_changed = 0;  // chosen set differs from the biased top-K over all experts
  double min_margin = INFINITY;   // smallest gap at a group or expert selection boundary
};

struct Output {
  Vec logits;                  // [B, S, vocab] of the main model
  double main_loss = NAN;      // with targets only
  std::vector<double> depth_losses;  // CE_k, k = 1..D (NaN where S <= k)
  double mtp_loss = 0.0, balance_loss = 0.0, loss = NAN;
  RoutingStats routing;
};

inline std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(v); }

// Hugging Face's DeepSeek rope for one vector v [d] at position pos: view v as [d/2, 2] and
// transpose to [2, d/2] (u_i = v_{2i}, u_{d/2+i} = v_{2i+1}), then
//   u·cos(emb) + rotate_half(u)·sin(emb),  emb_j = pos·inv_freq_{j mod d/2},
//   inv_freq_i = 1 / theta^(2i/d),  rotate_half(u) = [-u_{d/2..d-1}, u_{0..d/2-1}].
// The output stays in the permuted order; queries and keys get the same order, so dot products
// (all that attention reads) are those of the rotated pairs.
inline Vec rope(const Vec& v, std::int64_t pos, double theta) {
  const std::size_t d = v.size(), half = d / 2;
  Vec u(d), out(d);
  for (std::size_t i = 0; i < half; ++i) {
    u[i] = v[2 * i];
    u[half + i] = v[2 * i + 1];
  }
  for (std::size_t j = 0; j < d; ++j) {
    const std::size_t i = j % half;
    const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(d));
    const double angle = static_cast<double>(pos) * inv_freq;
    const double rotated = j < half ? -u[j + half] : u[j - half];
    out[j] = u[j] * std::cos(angle) + rotated * std::sin(angle);
  }
  return out;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// down_proj(silu(gate_proj(x)) ⊙ up_proj(x)) of the SwiGLU MLP "<pre>".
inline Vec swiglu(const Params& P, const std::string& pre, const Vec& x) {
  const Vec g = lin(P, pre + "gate_proj", x), u = lin(P, pre + "up_proj", x);
  Vec a(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) a[i] = g[i] * sigmoid(g[i]) * u[i];
  return lin(P, pre + "down_proj", a);
}

// MLA of layer prefix `pre` ("model.layers.N.") over one sequence of already normalised inputs
// x [S][hidden] at positions 0..S-1.
inline Seq mla(const nn::DeepseekV3Config& c, const Params& P, const std::string& pre, const Seq& x) {
  const std::size_t S = x.size(), H = to_size(c.num_attention_heads), dn = to_size(c.qk_nope_head_dim),
                    dr = to_size(c.qk_rope_head_dim), dv = to_size(c.v_head_dim), r = to_size(c.kv_lora_rank);
  const std::string a = pre + "self_attn.";
  // Per position and head: the query and key [nope | rotated rope part] and the value.
  std::vector<std::vector<Vec>> q(S), k(S), v(S);
  for (std::size_t s = 0; s < S; ++s) {
    const auto pos = static_cast<std::int64_t>(s);
    const Vec qf =
        c.q_lora_rank
            ? lin(P, a + "q_b_proj", rms(P, a + "q_a_layernorm", lin(P, a + "q_a_proj", x[s]), kLatentNormEps))
            : lin(P, a + "q_proj", x[s]);
    const Vec kv_a = lin(P, a + "kv_a_proj_with_mqa", x[s]);
    const Vec kv = lin(P, a + "kv_b_proj", rms(P, a + "kv_a_layernorm", slice(kv_a, 0, r), kLatentNormEps));
    const Vec k_pe = rope(slice(kv_a, r, dr), pos, c.rope_theta);  // one key part for every head
    for (std::size_t h = 0; h < H; ++h) {
      Vec qh = slice(qf, h * (dn + dr), dn);
      const Vec q_pe = rope(slice(qf, h * (dn + dr) + dn, dr), pos, c.rope_theta);
      qh.insert(qh.end(), q_pe.begin(), q_pe.end());
      Vec kh = slice(kv, h * (dn + dv), dn);
      kh.insert(kh.end(), k_pe.begin(), k_pe.end());
      q[s].push_back(qh);
      k[s].push_back(kh);
      v[s].push_back(slice(kv, h * (dn + dv) + dn, dv));
    }
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(dn + dr));
  Seq out(S);
  for (std::size_t i = 0; i < S; ++i) {
    Vec o(H * dv, 0.0);
    for (std::size_t h = 0; h < H; ++h) {
      Vec score(i + 1);
      double mx = -INFINITY;
      for (std::size_t j = 0; j <= i; ++j) {  // causal: keys 0..i
        score[j] = dot(q[i][h], k[j][h]) * scale;
        mx = std::max(mx, score[j]);
      }
      double z = 0.0;
      for (std::size_t j = 0; j <= i; ++j) z += std::exp(score[j] - mx);
      for (std::size_t j = 0; j <= i; ++j) {
        const double p = std::exp(score[j] - mx) / z;
        for (std::size_t e = 0; e < dv; ++e) o[h * dv + e] += p * v[j][h][e];
      }
    }
    out[i] = lin(P, a + "o_proj", o);
  }
  return out;
}

// The experts chosen from choice scores [E]: groups ranked by the sum of their two largest scores
// (the one score for groups of one), the best topk_group kept (all when use_groups is false), the
// K largest scores among their experts, best first. Adds the gaps at the boundaries to *margin.
inline std::vector<std::size_t> choose_experts(const nn::DeepseekV3Config& c, const Vec& choice, bool use_groups,
                                               double* margin) {
  const std::size_t E = choice.size(), G = to_size(c.n_group), per = E / G, K = to_size(c.num_experts_per_tok);
  std::vector<bool> kept(G, true);
  if (use_groups && c.topk_group < c.n_group) {
    std::vector<std::pair<double, std::size_t>> groups;
    for (std::size_t g = 0; g < G; ++g) {
      Vec mine(choice.begin() + static_cast<std::ptrdiff_t>(g * per),
               choice.begin() + static_cast<std::ptrdiff_t>((g + 1) * per));
      std::sort(mine.rbegin(), mine.rend());
      groups.emplace_back(mine[0] + (per > 1 ? mine[1] : 0.0), g);
    }
    std::sort(groups.begin(), groups.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
    std::fill(kept.begin(), kept.end(), false);
    const auto top = to_size(c.topk_group);
    for (std::size_t g = 0; g < top; ++g) kept[groups[g].second] = true;
    if (margin) *margin = std::min(*margin, groups[top - 1].first - groups[top].first);
  }
  std::vector<std::pair<double, std::size_t>> candidates;
  for (std::size_t e = 0; e < E; ++e)
    if (kept[e / per]) candidates.emplace_back(choice[e], e);
  std::sort(candidates.begin(), candidates.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  if (margin && K < candidates.size()) *margin = std::min(*margin, candidates[K - 1].first - candidates[K].first);
  std::vector<std::size_t> chosen;
  for (std::size_t i = 0; i < K; ++i) chosen.push_back(candidates[i].second);
  return chosen;
}

inline bool same_set(std::vector<std::size_t> a, std::vector<std::size_t> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return a == b;
}

// The MoE mlp "<pre>mlp." over one sequence x [S][hidden]; adds the sequence's balance loss
// α Σ_i f_i P_i (eq. 17-20) to *balance and the routing diagnostics to *stats.
inline Seq moe(const nn::DeepseekV3Config& c, const Params& P, const std::string& pre, const Seq& x, double* balance,
               RoutingStats* stats) {
  const std::string m = pre + "mlp.";
  const std::size_t S = x.size(), E = to_size(c.n_routed_experts), K = to_size(c.num_experts_per_tok);
  const Vec& bias = P[m + "gate.e_score_correction_bias"];
  Vec f(E, 0.0), p(E, 0.0);  // routes per expert and summed normalised affinities, over the sequence
  Seq out(S);
  for (std::size_t t = 0; t < S; ++t) {
    const Vec logits = lin(P, m + "gate", x[t]);
    Vec s(E), choice(E);
    for (std::size_t e = 0; e < E; ++e) {
      s[e] = sigmoid(logits[e]);
      choice[e] = s[e] + bias[e];
    }
    const std::vector<std::size_t> chosen = choose_experts(c, choice, true, &stats->min_margin);
    ++stats->tokens;
    if (!same_set(chosen, choose_experts(c, s, true, nullptr))) ++stats->bias_changed;
    if (!same_set(chosen, choose_experts(c, choice, false, nullptr))) ++stats->group_changed;

    double total = 0.0;
    for (std::size_t e : chosen) total += s[e];
    Vec y(x[t].size(), 0.0);
    for (std::size_t e : chosen) {
      double gate = s[e];
      if (c.norm_topk_prob && K > 1) gate /= total + 1e-20;
      gate *= c.routed_scaling_factor;
      const Vec ye = swiglu(P, m + "experts." + std::to_string(e) + ".", x[t]);
      for (std::size_t i = 0; i < y.size(); ++i) y[i] += gate * ye[i];
    }
    if (c.n_shared_experts > 0) {
      const Vec ys = swiglu(P, m + "shared_experts.", x[t]);
      for (std::size_t i = 0; i < y.size(); ++i) y[i] += ys[i];
    }
    out[t] = y;

    double s_sum = 0.0;
    for (double v : s) s_sum += v;
    for (std::size_t e = 0; e < E; ++e) p[e] += s[e] / s_sum;
    for (std::size_t e : chosen) f[e] += 1.0;
  }
  if (c.seq_aux_loss_alpha != 0.0) {
    double l = 0.0;
    const double T = static_cast<double>(S);
    for (std::size_t e = 0; e < E; ++e)
      l += (static_cast<double>(E) / (static_cast<double>(K) * T) * f[e]) * (p[e] / T);
    *balance += c.seq_aux_loss_alpha * l;
  }
  return out;
}

// HF's rule for which layers (MTP blocks included, by their index in model.layers) are MoE.
inline bool moe_layer(const nn::DeepseekV3Config& c, std::int64_t layer) {
  return c.n_routed_experts > 0 && layer >= c.first_k_dense_replace && layer % c.moe_layer_freq == 0;
}

// Decoder layer `layer` over one sequence h [S][hidden] (positions 0..S-1).
inline Seq decoder_layer(const nn::DeepseekV3Config& c, const Params& P, std::int64_t layer, const Seq& h,
                         double* balance, RoutingStats* stats) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  const std::size_t S = h.size();
  Seq x(S);
  for (std::size_t s = 0; s < S; ++s) x[s] = rms(P, pre + "input_layernorm", h[s], c.rms_norm_eps);
  const Seq att = mla(c, P, pre, x);
  Seq a(S), xn(S);
  for (std::size_t s = 0; s < S; ++s) {
    a[s] = h[s];
    for (std::size_t i = 0; i < a[s].size(); ++i) a[s][i] += att[s][i];
    xn[s] = rms(P, pre + "post_attention_layernorm", a[s], c.rms_norm_eps);
  }
  Seq mlp(S);
  if (moe_layer(c, layer)) {
    mlp = moe(c, P, pre, xn, balance, stats);
  } else {
    for (std::size_t s = 0; s < S; ++s) mlp[s] = swiglu(P, pre + "mlp.", xn[s]);
  }
  for (std::size_t s = 0; s < S; ++s)
    for (std::size_t i = 0; i < a[s].size(); ++i) a[s][i] += mlp[s][i];
  return a;
}

// The output linear: lm_head, or the embedding when tied.
inline Vec head(const nn::DeepseekV3Config& c, const Params& P, const Vec& x) {
  const Vec& w = c.tie_word_embeddings ? P["model.embed_tokens.weight"] : P["lm_head.weight"];
  const std::size_t in = x.size(), out = w.size() / in;
  Vec y(out, 0.0);
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
  return y;
}

inline Vec embed(const nn::DeepseekV3Config& c, const Params& P, std::int64_t id) {
  return slice(P["model.embed_tokens.weight"], to_size(id * c.hidden_size), to_size(c.hidden_size));
}

// logsumexp(logits) - logits[target].
inline double nll(const Vec& logits, std::int64_t target) {
  double mx = -INFINITY;
  for (double v : logits) mx = std::max(mx, v);
  double z = 0.0;
  for (double v : logits) z += std::exp(v - mx);
  return mx + std::log(z) - logits[to_size(target)];
}

// ids [B, S] row-major -> logits [B, S, vocab]; with targets [B, S] (next tokens, ignore_index to
// skip) also the losses of forward_with_loss. Each sequence runs on its own (no batching inside).
inline Output forward(const nn::DeepseekV3Config& c, const Params& P, const Ids& ids, std::size_t B, std::size_t S,
                      const Ids& targets = {}, std::int64_t ignore_index = -100) {
  Output out;
  const bool train = !targets.empty();
  const auto L = c.num_hidden_layers, D = c.num_nextn_predict_layers;
  const bool run_mtp = train && D > 0 && c.mtp_loss_weight != 0.0;
  double main_sum = 0.0, balance_sum = 0.0;  // balance: Σ over sequences (each layer averages over B)
  std::size_t main_count = 0;
  std::vector<double> depth_sum(to_size(D), 0.0);
  std::vector<std::size_t> depth_count(to_size(D), 0);
  for (std::size_t b = 0; b < B; ++b) {
    Seq h(S);
    for (std::size_t s = 0; s < S; ++s) h[s] = embed(c, P, ids[b * S + s]);
    for (std::int64_t l = 0; l < L; ++l) h = decoder_layer(c, P, l, h, &balance_sum, &out.routing);
    for (std::size_t s = 0; s < S; ++s) {
      const Vec logits = head(c, P, rms(P, "model.norm", h[s], c.rms_norm_eps));
      out.logits.insert(out.logits.end(), logits.begin(), logits.end());
      if (train && targets[b * S + s] != ignore_index) {
        main_sum += nll(logits, targets[b * S + s]);
        ++main_count;
      }
    }
    if (!run_mtp) continue;
    Seq prev = h;  // h^0: before the final norm
    for (std::int64_t k = 1; k <= D && static_cast<std::size_t>(k) < S; ++k) {
      const std::size_t n = S - static_cast<std::size_t>(k), ku = static_cast<std::size_t>(k);
      const std::string pre = "model.layers." + std::to_string(L + k - 1) + ".";
      Seq merged(n);
      for (std::size_t i = 0; i < n; ++i) {
        Vec both = rms(P, pre + "enorm", embed(c, P, ids[b * S + i + ku]), c.rms_norm_eps);
        const Vec hn = rms(P, pre + "hnorm", prev[i], c.rms_norm_eps);
        both.insert(both.end(), hn.begin(), hn.end());
        merged[i] = lin(P, pre + "eh_proj", both);
      }
      prev = decoder_layer(c, P, L + k - 1, merged, &balance_sum, &out.routing);
      for (std::size_t i = 0; i < n; ++i) {
        const std::int64_t target = targets[b * S + i + ku];  // the token k + 1 steps after position i
        if (target == ignore_index) continue;
        depth_sum[ku - 1] += nll(head(c, P, rms(P, pre + "shared_head.norm", prev[i], c.rms_norm_eps)), target);
        ++depth_count[ku - 1];
      }
    }
  }
  if (!train) return out;
  out.main_loss = main_sum / static_cast<double>(main_count);
  out.balance_loss = balance_sum / static_cast<double>(B);
  if (run_mtp) {
    for (std::int64_t k = 1; k <= D; ++k) {
      const std::size_t ku = static_cast<std::size_t>(k);
      if (ku >= S) {
        out.depth_losses.push_back(NAN);
        continue;
      }
      out.depth_losses.push_back(depth_sum[ku - 1] / static_cast<double>(depth_count[ku - 1]));
      out.mtp_loss += out.depth_losses.back();
    }
    out.mtp_loss *= c.mtp_loss_weight / static_cast<double>(D);
  }
  out.loss = out.main_loss + out.mtp_loss + out.balance_loss;
  return out;
}

}  // namespace kiln::testing::deepseek_ref
