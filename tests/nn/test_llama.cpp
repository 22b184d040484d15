// Llama-style decoder (nn/llama.hpp): logits against an independent plain-loop reference that
// follows Hugging Face's LlamaForCausalLM (rotate_half rope, repeat_kv head grouping), gradient
// checks, GQA against MHA with repeated key/value weights, the exact HF parameter names, causality,
// prefill and decoding over the preallocated KV cache, and errors.
#include <kiln/nn/llama.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

nn::LlamaConfig small_config() {
  nn::LlamaConfig c;
  c.vocab_size = 13;
  c.hidden_size = 12;
  c.intermediate_size = 10;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;  // not hidden / heads, as some checkpoints have
  c.rope_theta = 100.0;
  c.rms_norm_eps = 1e-5;
  return c;
}

nn::LlamaConfig tiny_config() {
  nn::LlamaConfig c;
  c.vocab_size = 7;
  c.hidden_size = 4;
  c.intermediate_size = 6;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.rope_theta = 10.0;
  return c;
}

// ---- the reference: plain loops, Hugging Face's order of operations ----

// HF Llama rope: v * cos(emb) + rotate_half(v) * sin(emb), emb = cat(freqs, freqs).
Vec hf_rope(const Vec& v, std::int64_t pos, double theta) {
  const std::size_t d = v.size(), half = d / 2;
  Vec out(d);
  for (std::size_t j = 0; j < d; ++j) {
    const std::size_t i = j % half;
    const double ang = static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double rot = j < half ? -v[j + half] : v[j - half];
    out[j] = v[j] * std::cos(ang) + rot * std::sin(ang);
  }
  return out;
}

// ids [B, S] -> logits [B, S, vocab], positions 0..S-1.
Vec reference_llama(const nn::LlamaConfig& c, const Params& P, const std::vector<std::int64_t>& ids, std::size_t B,
                    std::size_t S) {
  const auto hid = static_cast<std::size_t>(c.hidden_size), H = static_cast<std::size_t>(c.num_attention_heads),
             Hkv = static_cast<std::size_t>(c.num_key_value_heads), d = static_cast<std::size_t>(c.resolved_head_dim());
  Vec logits;
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<Vec> h(S);
    for (std::size_t s = 0; s < S; ++s)
      h[s] = slice(P["model.embed_tokens.weight"], static_cast<std::size_t>(ids[b * S + s]) * hid, hid);
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      std::vector<Vec> q(S), k(S), v(S);
      for (std::size_t s = 0; s < S; ++s) {
        const Vec xn = rms(P, pre + "input_layernorm", h[s], c.rms_norm_eps);
        q[s] = lin(P, pre + "self_attn.q_proj", xn);
        k[s] = lin(P, pre + "self_attn.k_proj", xn);
        v[s] = lin(P, pre + "self_attn.v_proj", xn);
        for (std::size_t hh = 0; hh < H; ++hh) {
          const Vec r = hf_rope(slice(q[s], hh * d, d), static_cast<std::int64_t>(s), c.rope_theta);
          std::copy(r.begin(), r.end(), q[s].begin() + static_cast<std::ptrdiff_t>(hh * d));
        }
        for (std::size_t hh = 0; hh < Hkv; ++hh) {
          const Vec r = hf_rope(slice(k[s], hh * d, d), static_cast<std::int64_t>(s), c.rope_theta);
          std::copy(r.begin(), r.end(), k[s].begin() + static_cast<std::ptrdiff_t>(hh * d));
        }
      }
      std::vector<Vec> next(S);
      for (std::size_t i = 0; i < S; ++i) {
        Vec o(H * d, 0.0);
        for (std::size_t hh = 0; hh < H; ++hh) {
          const std::size_t kvh = hh / (H / Hkv);  // repeat_kv
          Vec sc(i + 1);
          double mx = -INFINITY, se = 0.0;
          for (std::size_t j = 0; j <= i; ++j) {
            double dot = 0.0;
            for (std::size_t e = 0; e < d; ++e) dot += q[i][hh * d + e] * k[j][kvh * d + e];
            sc[j] = dot / std::sqrt(static_cast<double>(d));
            mx = std::max(mx, sc[j]);
          }
          for (std::size_t j = 0; j <= i; ++j) se += std::exp(sc[j] - mx);
          for (std::size_t j = 0; j <= i; ++j)
            for (std::size_t e = 0; e < d; ++e) o[hh * d + e] += std::exp(sc[j] - mx) / se * v[j][kvh * d + e];
        }
        Vec a = lin(P, pre + "self_attn.o_proj", o);
        for (std::size_t e = 0; e < hid; ++e) a[e] += h[i][e];
        const Vec xn = rms(P, pre + "post_attention_layernorm", a, c.rms_norm_eps);
        const Vec g = lin(P, pre + "mlp.gate_proj", xn), u = lin(P, pre + "mlp.up_proj", xn);
        Vec act(g.size());
        for (std::size_t e = 0; e < g.size(); ++e) act[e] = g[e] / (1.0 + std::exp(-g[e])) * u[e];
        const Vec m = lin(P, pre + "mlp.down_proj", act);
        for (std::size_t e = 0; e < hid; ++e) a[e] += m[e];
        next[i] = a;
      }
      h = next;
    }
    for (std::size_t s = 0; s < S; ++s) {
      const Vec hn = rms(P, "model.norm", h[s], c.rms_norm_eps);
      Params head;
      head.p["lm_head.weight"] = c.tie_word_embeddings ? P["model.embed_tokens.weight"] : P["lm_head.weight"];
      const Vec lg = lin(head, "lm_head", hn);
      logits.insert(logits.end(), lg.begin(), lg.end());
    }
  }
  return logits;
}

}  // namespace

TEST(NnLlama, ForwardMatchesHuggingFaceReference) {
  for (int variant = 0; variant < 3; ++variant) {
    nn::LlamaConfig c = small_config();
    c.tie_word_embeddings = variant == 1;
    c.attention_bias = c.mlp_bias = variant == 2;
    Generator gen{1, 0};
    nn::LlamaForCausalLM<double> m(c, gen);
    randomize(m, 20 + static_cast<std::uint64_t>(variant), 0.4);
    const std::int64_t B = 2, S = 7;
    const Tensor<std::int64_t> ids = randint<std::int64_t>(0, c.vocab_size, {B, S});
    const Tensor<double> logits = m(ids);
    EXPECT_EQ(logits.shape(), (Shape{B, S, c.vocab_size}));
    EXPECT_LT(relative_error(logits.to_vector(), reference_llama(c, params_of(m), ids.to_vector(), B, S)), 1e-12)
        << "variant " << variant;
  }
}

TEST(NnLlama, Gradcheck) {
  for (bool tied : {false, true}) {
    nn::LlamaConfig c = tiny_config();
    c.tie_word_embeddings = tied;
    c.num_hidden_layers = tied ? 2 : 1;
    Generator gen{2, 0};
    nn::LlamaForCausalLM<double> m(c, gen);
    randomize(m, 30, 0.6);
    const Tensor<std::int64_t> ids = tensor<std::int64_t>({1, 4, 4, 0, 6, 2}, {2, 3});
    auto r = module_gradcheck(m, {}, [&](const std::vector<Tensor<double>>&) { return m(ids); });
    EXPECT_TRUE(r.ok) << "tied " << tied << "\n" << r.report;
  }
}

TEST(NnLlama, GqaEqualsMhaWithRepeatedKv) {
  nn::LlamaConfig gqa_c = small_config();  // 4 query heads, 2 kv heads
  nn::LlamaConfig mha_c = gqa_c;
  mha_c.num_key_value_heads = 4;
  Generator g1{3, 0}, g2{4, 0};
  nn::LlamaForCausalLM<double> gqa(gqa_c, g1), mha(mha_c, g2);
  randomize(gqa, 40, 0.4);
  // Copy every weight; k_proj/v_proj rows of kv head j go to MHA heads 2j and 2j+1 (HF repeat_kv).
  const auto src = gqa.state();
  const std::int64_t d = gqa_c.resolved_head_dim(), rep = 2;
  std::size_t i = 0;
  mha.visit("", [&](const std::string& name, Tensor<double>* t, bool) {
    const Tensor<double>& s = src[i++].second;
    if (name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos) {
      // [Hkv * d, in] -> [Hkv, 1, d, in] -> [Hkv, rep, d, in] -> [H * d, in]
      const std::int64_t in = s.size(1);
      *t = reshape(expand(unsqueeze(reshape(s, {2, d, in}), 1), {2, rep, d, in}), {4 * d, in}).detach();
    } else {
      *t = s.detach();
    }
  });
  ASSERT_EQ(i, src.size());
  const Tensor<std::int64_t> ids = randint<std::int64_t>(0, gqa_c.vocab_size, {3, 6});
  EXPECT_LT(relative_error(gqa(ids), mha(ids)), 1e-13);
}

TEST(NnLlama, StateNamesMatchHuggingFace) {
  nn::LlamaConfig c = tiny_config();
  Generator gen{5, 0};
  nn::LlamaForCausalLM<double> m(c, gen);
  EXPECT_EQ(state_names(m), (std::vector<std::string>{
                          "model.embed_tokens.weight",
                          "model.layers.0.self_attn.q_proj.weight",
                          "model.layers.0.self_attn.k_proj.weight",
                          "model.layers.0.self_attn.v_proj.weight",
                          "model.layers.0.self_attn.o_proj.weight",
                          "model.layers.0.mlp.gate_proj.weight",
                          "model.layers.0.mlp.up_proj.weight",
                          "model.layers.0.mlp.down_proj.weight",
                          "model.layers.0.input_layernorm.weight",
                          "model.layers.0.post_attention_layernorm.weight",
                          "model.norm.weight",
                          "lm_head.weight",
                      }));
  const auto state = m.state();
  EXPECT_EQ(state[1].second.shape(), (Shape{2 * 2, 4}));  // q_proj [H d, hidden]
  EXPECT_EQ(state[2].second.shape(), (Shape{1 * 2, 4}));  // k_proj [Hkv d, hidden]
  EXPECT_EQ(state[5].second.shape(), (Shape{6, 4}));      // gate_proj [intermediate, hidden]
  EXPECT_EQ(state[11].second.shape(), (Shape{7, 4}));     // lm_head [vocab, hidden]

  c.tie_word_embeddings = true;
  c.attention_bias = true;
  nn::LlamaForCausalLM<double> tied(c, gen);
  const std::vector<std::string> n = state_names(tied);
  EXPECT_EQ(n.size(), 15u);
  EXPECT_EQ(std::count(n.begin(), n.end(), "lm_head.weight"), 0);
  for (const char* p : {"q", "k", "v", "o"})
    EXPECT_EQ(std::count(n.begin(), n.end(), "model.layers.0.self_attn." + std::string(p) + "_proj.bias"), 1) << p;

  // Same seed, same model.
  Generator a{9, 0}, b{9, 0};
  nn::LlamaForCausalLM<double> m1(tiny_config(), a), m2(tiny_config(), b);
  const auto s1 = m1.state(), s2 = m2.state();
  for (std::size_t k = 0; k < s1.size(); ++k) EXPECT_EQ(s1[k].second.to_vector(), s2[k].second.to_vector());
}

TEST(NnLlama, Causal) {
  nn::LlamaConfig c = small_config();
  Generator gen{6, 0};
  nn::LlamaForCausalLM<double> m(c, gen);
  randomize(m, 50, 0.4);
  const std::int64_t t = 4;
  const Tensor<std::int64_t> a = tensor<std::int64_t>({3, 1, 4, 1, 5, 9, 2}, {1, 7});
  const Tensor<std::int64_t> b = tensor<std::int64_t>({3, 1, 4, 1, 12, 0, 7}, {1, 7});
  const Tensor<double> ya = m(a), yb = m(b);
  EXPECT_EQ(narrow(ya, 1, 0, t).to_vector(), narrow(yb, 1, 0, t).to_vector());
  EXPECT_GT(relative_error(narrow(yb, 1, t, 1), narrow(ya, 1, t, 1)), 1e-3);
}

// Generation's path (infer/kv_cache.hpp): prompts prefilled into the preallocated K/V cache, then
// one token per row per decode step; the logits equal the full forward's at every position.
TEST(NnLlama, PrefillAndDecodeEqualFullForward) {
  nn::LlamaConfig c = small_config();
  Generator gen{7, 0};
  nn::LlamaForCausalLM<double> m(c, gen);
  randomize(m, 60, 0.4);
  const std::int64_t B = 2, S = 7, P = 3;
  const Tensor<std::int64_t> ids = randint<std::int64_t>(0, c.vocab_size, {B, S});
  const Tensor<double> full = m(ids);

  NoGradGuard no_grad;
  auto cache = m.make_decode_cache(B, S);
  ASSERT_EQ(cache.kv.num_layers(), 2);
  EXPECT_EQ(cache.kv.layer(0).k.shape(), (Shape{B, S, 2, 6}));  // [slots, capacity, kv heads, head dim]
  EXPECT_EQ(cache.kv.layer(1).v.shape(), (Shape{B, S, 2, 6}));
  const auto index = infer::PrefillIndex::make({P, P}, P, {0, 1}, {}, B, Device::cpu());
  std::vector<Tensor<double>> pieces{unsqueeze(m.prefill(contiguous(narrow(ids, 1, 0, P)), index, cache), 1)};
  auto step = infer::DecodeIndex::at(tensor<std::int64_t>({0, 1}), tensor<std::int64_t>({P, P}));
  for (std::int64_t t = P; t < S; ++t, step = step.next())
    pieces.push_back(unsqueeze(m.decode(reshape(contiguous(narrow(ids, 1, t, 1)), {B}), step, cache), 1));
  EXPECT_LT(relative_error(cat(pieces, 1), narrow(full, 1, P - 1, S - P + 1)), 1e-12);

  // The cached keys are the rotated k_proj of the normalised inputs: layer 0, kv head 1, position 2.
  const Tensor<double> h = m.model.layers[0]->input_layernorm(m.model.embed_tokens(ids));
  const Tensor<double> k = rope(reshape(m.model.layers[0]->self_attn.k_proj(h), {B, S, 2, 6}),
                                nn::positions_from(0, S), c.rope_theta, RopeLayout::half_split);
  EXPECT_LT(relative_error(narrow(narrow(cache.kv.layer(0).k, 1, 2, 1), 2, 1, 1), narrow(narrow(k, 1, 2, 1), 2, 1, 1)),
            1e-14);

  // A cache made for another depth, and ids that do not fit the index, are errors.
  nn::LlamaConfig shallow = small_config();
  shallow.num_hidden_layers = 1;
  nn::LlamaForCausalLM<double> m1(shallow, gen);
  auto other = m1.make_decode_cache(B, S);
  EXPECT_KILN_ERROR(m.decode(tensor<std::int64_t>({1, 2}), step, other), "decode", "1 layers", "has 2");
  EXPECT_KILN_ERROR(m.decode(tensor<std::int64_t>({1, 2, 3}), step, cache), "decode", "[3]");
  EXPECT_KILN_ERROR(m.prefill(ids, index, cache), "prefill", "[2, 7]", "[2, 3]");
}

TEST(NnLlama, Errors) {
  Generator gen{8, 0};
  nn::LlamaConfig bad = tiny_config();
  bad.num_key_value_heads = 3;
  bad.num_attention_heads = 4;
  bad.hidden_size = 8;
  EXPECT_KILN_ERROR(nn::LlamaForCausalLM<double>(bad, gen), "LlamaAttention", "num_key_value_heads 3");
  nn::LlamaForCausalLM<double> m(tiny_config(), gen);
  EXPECT_KILN_ERROR(m(tensor<std::int64_t>({1, 2, 3})), "LlamaForCausalLM", "[3]");
  EXPECT_KILN_ERROR(m(tensor<std::int64_t>({1, 7}, {1, 2})), "embedding", "7");
  EXPECT_KILN_ERROR(m.forward(tensor<std::int64_t>({1, 2}, {1, 2}), nn::positions_from(0, 3)), "LlamaModel",
                    "positions", "[3]");
}

TEST(NnLlama, FloatAndBf16FollowDouble) {
  const nn::LlamaConfig c = small_config();
  Generator g1{10, 0}, g2{10, 0}, g3{10, 0};
  nn::LlamaForCausalLM<double> md(c, g1);
  nn::LlamaForCausalLM<float> mf(c, g2);
  nn::LlamaForCausalLM<bf16> mb(c, g3);
  randomize(md, 70, 0.4);
  copy_params<float>(mf, md);
  copy_params<bf16>(mb, md);
  const Tensor<std::int64_t> ids = randint<std::int64_t>(0, c.vocab_size, {2, 6});
  const Tensor<double> ref = md(ids);
  EXPECT_LT(relative_error(mf(ids), ref), 1e-5);
  // bf16 rounds every stored intermediate of two layers (about 1e-2 measured), not only the operands.
  EXPECT_LT(relative_error(mb(ids), ref), 2e-2);
}

// The config is checked once in the model's constructor, whatever the layer count (issue 13: with
// 0 layers no attention layer checked the heads, and the forward divided by 0 heads).
TEST(NnLlama, ConfigCheckedWithoutLayers) {
  Generator gen{9, 0};
  nn::LlamaConfig c = tiny_config();
  c.num_hidden_layers = 0;
  c.num_attention_heads = 0;
  EXPECT_KILN_ERROR((void)nn::LlamaForCausalLM<double>(c, gen), "LlamaAttention", "num_attention_heads 0");
  c = tiny_config();
  c.num_hidden_layers = 0;
  c.num_key_value_heads = 3;  // does not divide 2 heads
  EXPECT_KILN_ERROR((void)nn::LlamaForCausalLM<double>(c, gen), "num_key_value_heads 3");
  c = tiny_config();
  c.num_hidden_layers = -1;
  EXPECT_KILN_ERROR((void)nn::LlamaForCausalLM<double>(c, gen), "LlamaModel", "num_hidden_layers (-1)");
  c = tiny_config();
  c.vocab_size = 0;
  EXPECT_KILN_ERROR((void)nn::LlamaForCausalLM<double>(c, gen), "LlamaModel", "vocab_size (0)");
  // A valid config with no layers is a model: embedding, norm, head.
  c = tiny_config();
  c.num_hidden_layers = 0;
  nn::LlamaForCausalLM<double> m(c, gen);
  EXPECT_EQ(m.forward(tensor<std::int64_t>({1, 2, 3}, {1, 3})).shape(), (Shape{1, 3, 7}));
}
