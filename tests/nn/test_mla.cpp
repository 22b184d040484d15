// Multi-head Latent Attention (nn/mla.hpp): the naive path against an independent plain-loop
// reference that follows Hugging Face's modeling_deepseek step by step (including its rope: the
// [dr/2, 2] -> [2, dr/2] permutation then rotate_half), naive vs absorbed paths, prefill and
// decoding over the preallocated latent cache, gradient checks, causality, parameter names and
// errors.
#include <kiln/nn/mla.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

nn::DeepseekV3Config small_config(bool q_lora) {
  nn::DeepseekV3Config c;
  c.hidden_size = 12;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 3;
  c.q_lora_rank = q_lora ? std::optional<std::int64_t>(7) : std::nullopt;
  c.kv_lora_rank = 5;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 6;
  c.v_head_dim = 3;
  c.attention_bias = !q_lora;  // exercise both
  c.rope_theta = 50.0;         // large angles at small positions
  return c;
}

nn::DeepseekV3Config tiny_config(bool q_lora) {
  nn::DeepseekV3Config c;
  c.hidden_size = 6;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = q_lora ? std::optional<std::int64_t>(4) : std::nullopt;
  c.kv_lora_rank = 3;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.attention_bias = !q_lora;
  c.rope_theta = 10.0;
  return c;
}

// ---- the reference: plain loops over one token at a time, Hugging Face's order of operations ----

// Hugging Face builds q_a_layernorm and kv_a_layernorm with the default eps, not rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

// HF DeepSeek-V3 rope for one vector at position p: view [d/2, 2], transpose to [2, d/2] (u), then
// u * cos(emb) + rotate_half(u) * sin(emb), emb = cat(freqs, freqs).
Vec hf_rope(const Vec& v, std::int64_t pos, double theta) {
  const std::size_t d = v.size(), half = d / 2;
  Vec u(d), out(d);
  for (std::size_t i = 0; i < half; ++i) u[i] = v[2 * i], u[half + i] = v[2 * i + 1];
  for (std::size_t j = 0; j < d; ++j) {
    const std::size_t i = j % half;
    const double ang = static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double rot = j < half ? -u[j + half] : u[j - half];
    out[j] = u[j] * std::cos(ang) + rot * std::sin(ang);
  }
  return out;
}

// x [B, S, hidden] -> [B, S, hidden].
Vec reference_mla(const nn::DeepseekV3Config& c, const Params& P, const Vec& x, std::size_t B, std::size_t S,
                  const std::vector<std::int64_t>& positions) {
  const auto H = static_cast<std::size_t>(c.num_attention_heads), dn = static_cast<std::size_t>(c.qk_nope_head_dim),
             dr = static_cast<std::size_t>(c.qk_rope_head_dim), dv = static_cast<std::size_t>(c.v_head_dim),
             r = static_cast<std::size_t>(c.kv_lora_rank), hid = static_cast<std::size_t>(c.hidden_size);
  Vec out(B * S * hid);
  for (std::size_t b = 0; b < B; ++b) {
    // Per token: query, key and value per head (the key's rope part shared by the heads).
    std::vector<std::vector<Vec>> qn(S), qp(S), kn(S), vv(S);
    std::vector<Vec> kp(S);
    for (std::size_t s = 0; s < S; ++s) {
      const Vec xt = slice(x, (b * S + s) * hid, hid);
      const Vec q = c.q_lora_rank
                        ? lin(P, "q_b_proj", rms(P, "q_a_layernorm", lin(P, "q_a_proj", xt), kLatentNormEps))
                        : lin(P, "q_proj", xt);
      const Vec kva = lin(P, "kv_a_proj_with_mqa", xt);
      const Vec kv = lin(P, "kv_b_proj", rms(P, "kv_a_layernorm", slice(kva, 0, r), kLatentNormEps));
      kp[s] = hf_rope(slice(kva, r, dr), positions[s], c.rope_theta);
      for (std::size_t h = 0; h < H; ++h) {
        qn[s].push_back(slice(q, h * (dn + dr), dn));
        qp[s].push_back(hf_rope(slice(q, h * (dn + dr) + dn, dr), positions[s], c.rope_theta));
        kn[s].push_back(slice(kv, h * (dn + dv), dn));
        vv[s].push_back(slice(kv, h * (dn + dv) + dn, dv));
      }
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(dn + dr));
    for (std::size_t i = 0; i < S; ++i) {
      Vec o(H * dv, 0.0);
      for (std::size_t h = 0; h < H; ++h) {
        Vec sc(i + 1);
        double mx = -INFINITY, se = 0.0;
        for (std::size_t j = 0; j <= i; ++j) {
          sc[j] = (dot(qn[i][h], kn[j][h]) + dot(qp[i][h], kp[j])) * scale;
          mx = std::max(mx, sc[j]);
        }
        for (std::size_t j = 0; j <= i; ++j) se += std::exp(sc[j] - mx);
        for (std::size_t j = 0; j <= i; ++j)
          for (std::size_t e = 0; e < dv; ++e) o[h * dv + e] += std::exp(sc[j] - mx) / se * vv[j][h][e];
      }
      const Vec y = lin(P, "o_proj", o);
      for (std::size_t e = 0; e < hid; ++e) out[(b * S + i) * hid + e] = y[e];
    }
  }
  return out;
}

}  // namespace

TEST(NnMLA, ForwardMatchesHuggingFaceReference) {
  for (bool q_lora : {true, false}) {
    const nn::DeepseekV3Config c = small_config(q_lora);
    Generator gen{1, 0};
    nn::MLA<double> m(c, gen);
    randomize(m, 7, 0.4);
    const std::int64_t B = 2, S = 7;
    const Tensor<double> x = randn<double>({B, S, c.hidden_size});
    const Tensor<std::int64_t> pos = nn::positions_from(3, S);
    const Vec ref = reference_mla(c, params_of(m), x.to_vector(), B, S, pos.to_vector());
    const Tensor<double> naive = m.forward(x, pos), absorbed = m.forward_absorbed(x, pos);
    EXPECT_EQ(naive.shape(), (Shape{B, S, c.hidden_size}));
    EXPECT_LT(relative_error(naive.to_vector(), ref), 1e-12) << "q_lora " << q_lora;
    EXPECT_LT(relative_error(absorbed.to_vector(), ref), 1e-12) << "q_lora " << q_lora;
    // A non-contiguous input gives the same numbers.
    const Tensor<double> xt = transpose(contiguous(transpose(x, 0, 1)), 0, 1);
    ASSERT_FALSE(xt.is_contiguous());
    EXPECT_LT(relative_error(m.forward(xt, pos).to_vector(), ref), 1e-12);
  }
}

TEST(NnMLA, NaiveAndAbsorbedAgree) {
  for (bool q_lora : {true, false}) {
    nn::DeepseekV3Config c = small_config(q_lora);
    c.hidden_size = 33;
    c.num_attention_heads = 4;
    c.kv_lora_rank = 9;
    c.qk_nope_head_dim = 7;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 5;
    Generator gen{2, 0};
    nn::MLA<double> m(c, gen);
    randomize(m, 8, 0.3);
    const Tensor<double> x = randn<double>({3, 11, c.hidden_size});
    const Tensor<double> naive = m.forward(x), absorbed = m.forward_absorbed(x);
    EXPECT_LT(relative_error(absorbed, naive), 1e-10) << "q_lora " << q_lora;
    EXPECT_GT(relative_error(absorbed, mul(naive, 1.0 + 1e-9)), 0.0);  // the comparison can see a difference
  }
}

// Generation's path (infer/kv_cache.hpp): a ragged batch prefilled through the naive path into
// the latent cache (slots in reverse order), then decoded one token per row through the absorbed
// path, rows at different positions in one step and the shorter-lived row leaving early.
TEST(NnMLA, PrefillAndDecodeOverTheLatentCacheEqualFullForward) {
  for (bool q_lora : {true, false}) {
    const nn::DeepseekV3Config c = small_config(q_lora);
    Generator gen{3, 0};
    nn::MLA<double> m(c, gen);
    randomize(m, 9, 0.4);
    const std::int64_t B = 2, S = 8, r = c.kv_lora_rank, dr = c.qk_rope_head_dim;
    const Tensor<double> x = randn<double>({B, S, c.hidden_size});
    const Tensor<double> full = m.forward(x);

    NoGradGuard no_grad;
    // Row 0: a prompt of 4 tokens, decoded to 6; row 1: a prompt of 2, decoded to 8. Row b lives
    // in slot 2 - b of a 3-slot cache.
    const std::vector<std::int64_t> prompt{4, 2}, end{6, 8}, slot{2, 1};
    auto cache = infer::KVCache<double>::latent(1, 3, S, r, dr, Device::cpu());
    EXPECT_EQ(cache.layer(0).k.shape(), (Shape{3, S, 1, r + dr}));
    EXPECT_EQ(cache.layer(0).v.shape(), (Shape{3, S, 1, r}));
    EXPECT_EQ(cache.bytes(), 3 * S * (r + dr) * 8);
    const auto prefill_index = infer::PrefillIndex::make(prompt, 4, slot, {}, 3, Device::cpu());
    const Tensor<double> pre =
        m.prefill(narrow(x, 1, 0, 4), rope_tables<double>(nn::positions_from(0, 4), dr, c.rope_theta), cache.layer(0),
                  prefill_index);
    std::vector<std::vector<Tensor<double>>> got(2);  // per row: the outputs of its tokens, in order
    for (std::int64_t b = 0; b < B; ++b) got[b].push_back(narrow(narrow(pre, 0, b, 1), 1, 0, prompt[b]));
    for (std::int64_t step = 0;; ++step) {
      std::vector<std::int64_t> rows, slots, positions;
      for (std::int64_t b = 0; b < B; ++b)
        if (prompt[b] + step < end[b]) {
          rows.push_back(b);
          slots.push_back(slot[b]);
          positions.push_back(prompt[b] + step);
        }
      if (rows.empty()) break;
      std::vector<Tensor<double>> xs;
      for (std::size_t i = 0; i < rows.size(); ++i) xs.push_back(narrow(narrow(x, 0, rows[i], 1), 1, positions[i], 1));
      const auto index = infer::DecodeIndex::at(tensor(slots), tensor(positions));
      const Tensor<double> y = m.decode(cat(xs, 0), nn::decode_rope_tables<double>(index.positions, dr, c.rope_theta,
                                                                                  Device::cpu()),
                                        cache.layer(0), index);
      EXPECT_EQ(y.shape(), (Shape{static_cast<std::int64_t>(rows.size()), 1, c.hidden_size}));
      for (std::size_t i = 0; i < rows.size(); ++i) got[rows[i]].push_back(narrow(y, 0, static_cast<std::int64_t>(i), 1));
    }
    for (std::int64_t b = 0; b < B; ++b)
      EXPECT_LT(relative_error(cat(got[b], 1), narrow(narrow(full, 0, b, 1), 1, 0, end[b])), 1e-12)
          << "row " << b << ", q_lora " << q_lora;

    // The cache holds c = kv_a_layernorm(compressed_kv) in its first r columns: row 1's 8 tokens in slot 1.
    const Tensor<double> c_ref = m.kv_a_layernorm(narrow(m.kv_a_proj_with_mqa(narrow(x, 0, 1, 1)), -1, 0, r));
    EXPECT_LT(relative_error(reshape(contiguous(narrow(cache.layer(0).v, 0, 1, 1)), {1, S, r}), c_ref), 1e-14);

    // A cache of another layout (Llama's K/V) or more than one token per row is an error.
    const auto index = infer::DecodeIndex::at(tensor<std::int64_t>({0}), tensor<std::int64_t>({0}));
    const auto tables = nn::decode_rope_tables<double>(index.positions, dr, c.rope_theta, Device::cpu());
    auto kv = infer::KVCache<double>::separate(1, 1, 4, 3, r + dr, r, Device::cpu());
    EXPECT_KILN_ERROR(m.decode(narrow(x, 0, 0, 1), tables, kv.layer(0), index), "MLA", "one token per row");
    EXPECT_KILN_ERROR(m.decode(narrow(narrow(x, 0, 0, 1), 1, 0, 1), tables, kv.layer(0), index), "MLA",
                      "latent cache");
  }
}

TEST(NnMLA, Gradcheck) {
  for (bool q_lora : {true, false}) {
    const nn::DeepseekV3Config c = tiny_config(q_lora);
    Generator gen{4, 0};
    nn::MLA<double> m(c, gen);
    randomize(m, 10, 0.6);
    const Tensor<double> x = randn<double>({2, 3, c.hidden_size});
    const Tensor<std::int64_t> pos = nn::positions_from(1, 3);
    auto r = module_gradcheck(m, {x}, [&](const std::vector<Tensor<double>>& in) { return m.forward(in[0], pos); });
    EXPECT_TRUE(r.ok) << "naive, q_lora " << q_lora << "\n" << r.report;
    r = module_gradcheck(m, {x}, [&](const std::vector<Tensor<double>>& in) { return m.forward_absorbed(in[0], pos); });
    EXPECT_TRUE(r.ok) << "absorbed, q_lora " << q_lora << "\n" << r.report;
  }
}

TEST(NnMLA, Causal) {
  const nn::DeepseekV3Config c = small_config(true);
  Generator gen{5, 0};
  nn::MLA<double> m(c, gen);
  randomize(m, 11, 0.4);
  const std::int64_t S = 6, t = 3;
  const Tensor<double> x = randn<double>({2, S, c.hidden_size});
  const Tensor<double> x2 =
      cat(std::vector<Tensor<double>>{narrow(x, 1, 0, t), randn<double>({2, S - t, c.hidden_size})}, 1);
  for (bool absorbed : {false, true}) {
    const Tensor<double> y = absorbed ? m.forward_absorbed(x) : m.forward(x);
    const Tensor<double> y2 = absorbed ? m.forward_absorbed(x2) : m.forward(x2);
    EXPECT_EQ(narrow(y, 1, 0, t).to_vector(), narrow(y2, 1, 0, t).to_vector()) << "absorbed " << absorbed;
    EXPECT_GT(relative_error(narrow(y2, 1, t, 1), narrow(y, 1, t, 1)), 1e-3);
  }
}

TEST(NnMLA, StateNamesAndShapes) {
  Generator gen{6, 0};
  const nn::DeepseekV3Config c = small_config(true);  // no bias
  nn::MLA<double> m(c, gen);
  EXPECT_EQ(state_names(m), (std::vector<std::string>{"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight",
                                                "kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight",
                                                "kv_b_proj.weight", "o_proj.weight"}));
  EXPECT_EQ(m.q_a_proj->weight.shape(), (Shape{7, 12}));
  EXPECT_EQ(m.q_b_proj->weight.shape(), (Shape{3 * 10, 7}));
  EXPECT_EQ(m.kv_a_proj_with_mqa.weight.shape(), (Shape{5 + 6, 12}));
  EXPECT_EQ(m.kv_b_proj.weight.shape(), (Shape{3 * (4 + 3), 5}));
  EXPECT_EQ(m.o_proj.weight.shape(), (Shape{12, 3 * 3}));
  EXPECT_DOUBLE_EQ(m.softmax_scale, 1.0 / std::sqrt(10.0));

  nn::MLA<double> plain(small_config(false), gen);  // q_proj, with attention_bias
  EXPECT_EQ(state_names(plain), (std::vector<std::string>{"q_proj.weight", "kv_a_proj_with_mqa.weight",
                                                    "kv_a_proj_with_mqa.bias", "kv_a_layernorm.weight",
                                                    "kv_b_proj.weight", "o_proj.weight", "o_proj.bias"}));
  EXPECT_EQ(plain.q_proj->weight.shape(), (Shape{3 * 10, 12}));
}

TEST(NnMLA, Errors) {
  Generator gen{7, 0};
  nn::MLA<double> m(small_config(true), gen);
  EXPECT_KILN_ERROR(m.forward(randn<double>({2, 5, 7})), "MLA", "[2, 5, 7]");
  EXPECT_KILN_ERROR(m.forward(randn<double>({5, 12})), "MLA", "[5, 12]");
  EXPECT_KILN_ERROR(m.forward(randn<double>({2, 5, 12}), nn::positions_from(0, 4)), "MLA", "positions", "[4]");
  nn::DeepseekV3Config odd = small_config(true);
  odd.qk_rope_head_dim = 5;
  EXPECT_KILN_ERROR(nn::MLA<double>(odd, gen), "MLA", "qk_rope_head_dim", "5");
}

TEST(NnMLA, FloatAndBf16FollowDouble) {
  const nn::DeepseekV3Config c = small_config(true);
  Generator g1{12, 0}, g2{12, 0}, g3{12, 0};
  nn::MLA<double> md(c, g1);
  nn::MLA<float> mf(c, g2);
  nn::MLA<bf16> mb(c, g3);
  randomize(md, 13, 0.4);
  copy_params<float>(mf, md);
  copy_params<bf16>(mb, md);
  const Tensor<double> x = randn<double>({2, 5, c.hidden_size});
  const Tensor<double> ref = md.forward(x);
  EXPECT_LT(relative_error(mf.forward(cast<float>(x)), ref), 1e-5);
  EXPECT_LT(relative_error(mf.forward_absorbed(cast<float>(x)), ref), 1e-5);
  EXPECT_LT(relative_error(mb.forward(cast<bf16>(x)), ref), 1e-2);
  EXPECT_LT(relative_error(mb.forward_absorbed(cast<bf16>(x)), ref), 1e-2);
}
