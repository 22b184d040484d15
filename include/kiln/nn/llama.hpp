// Llama-style dense decoder, with Hugging Face LlamaForCausalLM's parameter names and semantics:
//   h = embed_tokens(ids)
//   per layer:  h = h + self_attn(input_layernorm(h));  h = h + mlp(post_attention_layernorm(h))
//   logits = lm_head(norm(h))      (lm_head = embed_tokens when tie_word_embeddings)
// Attention is grouped-query (GQA): num_attention_heads query heads share num_key_value_heads
// key/value heads, query head h reading kv head h / (num_attention_heads / num_key_value_heads)
// (HF's repeat_kv order); rope in the half_split layout (HF's rotate_half) with rope_theta; scale
// 1/sqrt(head_dim); causal. Not implemented: rope_scaling (Llama 3 frequency rescaling).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/nn/attention.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/ops/concat.hpp"

namespace kiln::nn {

// Keys (rotated) and values of one layer's past tokens, [B, num_key_value_heads, S, head_dim].
template <class T>
struct KVCache {
  Tensor<T> k, v;
  std::int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

// One KVCache per layer, for incremental decoding with LlamaForCausalLM::forward(ids, &cache).
template <class T>
using LlamaCache = DecoderCache<KVCache<T>>;

template <class T>
class LlamaAttention : public Module<T> {
 public:
  using Tables = RopeTables<compute_t<T>>;

  LlamaAttention(const LlamaConfig& c, Generator& gen)
      : num_heads(c.num_attention_heads),
        num_key_value_heads(c.num_key_value_heads),
        head_dim(checked_head_dim(c)),
        q_proj(c.hidden_size, num_heads * head_dim, c.attention_bias, c.initializer_range, gen),
        k_proj(c.hidden_size, num_key_value_heads * head_dim, c.attention_bias, c.initializer_range, gen),
        v_proj(c.hidden_size, num_key_value_heads * head_dim, c.attention_bias, c.initializer_range, gen),
        o_proj(num_heads * head_dim, c.hidden_size, c.attention_bias, c.initializer_range, gen) {
    this->register_module("q_proj", &q_proj);
    this->register_module("k_proj", &k_proj);
    this->register_module("v_proj", &v_proj);
    this->register_module("o_proj", &o_proj);
  }

  // x [B, S, hidden] with rope tables for head_dim (of positions [S] or [B, S]) -> [B, S, hidden].
  // With a cache, the new keys/values are appended and the queries attend over all of them.
  Tensor<T> forward(const Tensor<T>& x, const Tables& tables, KVCache<T>* cache = nullptr) const {
    check_defined("LlamaAttention", x);
    check(x.dim() == 3 && x.size(2) == q_proj.in_features, "LlamaAttention", "input of shape ", x.shape(),
          " is not [B, S, hidden] with hidden = ", q_proj.in_features);
    const std::int64_t B = x.size(0), S = x.size(1), Hkv = num_key_value_heads, G = num_heads / Hkv;
    // rope rotates [B, S, heads, D]; attention wants heads before the sequence.
    const Tensor<T> q = rope(reshape(q_proj(x), {B, S, num_heads, head_dim}), tables, RopeLayout::half_split);
    Tensor<T> k = transpose(rope(reshape(k_proj(x), {B, S, Hkv, head_dim}), tables, RopeLayout::half_split), 1, 2);
    Tensor<T> v = transpose(reshape(v_proj(x), {B, S, Hkv, head_dim}), 1, 2);
    if (cache) {
      if (cache->length() > 0) {
        check(cache->k.size(0) == B && cache->k.size(1) == Hkv && cache->k.size(3) == head_dim, "LlamaAttention",
              "cache of shape ", cache->k.shape(), " does not fit input of shape ", x.shape());
        k = cat(std::vector<Tensor<T>>{cache->k, k}, 2);
        v = cat(std::vector<Tensor<T>>{cache->v, v}, 2);
      }
      cache->k = k;
      cache->v = v;
    }
    // Query heads grouped per kv head: [B, Hkv, G, S, D] against keys [B, Hkv, 1, Sk, D]; the
    // product broadcasts the shared key over the group, so repeated keys are never materialised.
    const Tensor<T> qg = reshape(transpose(q, 1, 2), {B, Hkv, G, S, head_dim});
    const Tensor<T> o = causal_attention(qg, unsqueeze(k, 2), unsqueeze(v, 2), 1.0 / std::sqrt(double(head_dim)));
    return o_proj(reshape(transpose(reshape(o, {B, num_heads, S, head_dim}), 1, 2), {B, S, num_heads * head_dim}));
  }

  std::int64_t num_heads, num_key_value_heads, head_dim;
  Linear<T> q_proj, k_proj, v_proj, o_proj;

 private:
  static std::int64_t checked_head_dim(const LlamaConfig& c) {
    check(c.hidden_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0 &&
              c.num_attention_heads % c.num_key_value_heads == 0,
          "LlamaAttention", "num_key_value_heads ", c.num_key_value_heads, " must divide num_attention_heads ",
          c.num_attention_heads, " (both positive)");
    const std::int64_t d = c.resolved_head_dim();
    check(d > 0 && d % 2 == 0, "LlamaAttention", "head_dim must be even and positive for rope, got ", d);
    return d;
  }
};

template <class T>
class LlamaDecoderLayer : public Module<T> {
 public:
  LlamaDecoderLayer(const LlamaConfig& c, Generator& gen)
      : self_attn(c, gen),
        mlp(c.hidden_size, c.intermediate_size, c.initializer_range, gen, c.mlp_bias),
        input_layernorm(c.hidden_size, c.rms_norm_eps),
        post_attention_layernorm(c.hidden_size, c.rms_norm_eps) {
    check(c.hidden_act == "silu", "LlamaDecoderLayer", "hidden_act \"", c.hidden_act,
          "\" is not supported (only silu)");
    this->register_module("self_attn", &self_attn);
    this->register_module("mlp", &mlp);
    this->register_module("input_layernorm", &input_layernorm);
    this->register_module("post_attention_layernorm", &post_attention_layernorm);
  }

  Tensor<T> forward(const Tensor<T>& h, const RopeTables<compute_t<T>>& tables, KVCache<T>* cache = nullptr) const {
    const Tensor<T> a = add(h, self_attn.forward(input_layernorm(h), tables, cache));
    return add(a, mlp(post_attention_layernorm(a)));
  }

  LlamaAttention<T> self_attn;
  SwiGLUMLP<T> mlp;
  RMSNorm<T> input_layernorm, post_attention_layernorm;
};

// The decoder stack without the output head ("model." in HF names).
template <class T>
class LlamaModel : public Module<T> {
 public:
  LlamaModel(const LlamaConfig& c, Generator& gen)
      : config(c),
        embed_tokens(c.vocab_size, c.hidden_size, c.initializer_range, gen),
        norm(c.hidden_size, c.rms_norm_eps) {
    this->register_module("embed_tokens", &embed_tokens);
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers.push_back(std::make_unique<LlamaDecoderLayer<T>>(c, gen));
      this->register_module("layers." + std::to_string(i), layers.back().get());
    }
    this->register_module("norm", &norm);
  }

  // ids [B, S], positions [S] or [B, S] -> final hidden states [B, S, hidden] (after norm).
  // With a cache (one entry per layer, created on first use) the ids are the tokens after the
  // cached ones.
  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    LlamaCache<T>* cache = nullptr) const {
    check_ids("LlamaModel", ids);
    if (cache) cache->prepare("LlamaModel", layers.size());
    check_positions("LlamaModel", positions, ids.size(0), ids.size(1));
    Tensor<T> h = embed_tokens(ids);
    const auto tables = rope_tables_on<T>(positions, config.resolved_head_dim(), config.rope_theta, h.device());
    for (std::size_t i = 0; i < layers.size(); ++i)
      h = layers[i]->forward(h, tables, cache ? &cache->layers[i] : nullptr);
    return norm(h);
  }

  LlamaConfig config;
  Embedding<T> embed_tokens;
  std::vector<std::unique_ptr<LlamaDecoderLayer<T>>> layers;
  RMSNorm<T> norm;
};

template <class T>
class LlamaForCausalLM : public Module<T> {
 public:
  LlamaForCausalLM(const LlamaConfig& c, Generator& gen)
      : model(c, gen),
        lm_head(c.tie_word_embeddings ? nullptr
                                      : std::make_unique<Linear<T>>(c.hidden_size, c.vocab_size, false,
                                                                    c.initializer_range, gen)) {
    this->register_module("model", &model);
    if (lm_head) this->register_module("lm_head", lm_head.get());
  }

  // ids [B, S] -> logits [B, S, vocab], positions 0..S-1.
  Tensor<T> forward(const Tensor<std::int64_t>& ids) const {
    return forward(ids, positions_from(0, check_ids("LlamaForCausalLM", ids)));
  }
  Tensor<T> operator()(const Tensor<std::int64_t>& ids) const { return forward(ids); }

  // Incremental decoding: ids [B, S] are the tokens after the cache's, at positions past..past+S-1.
  Tensor<T> forward(const Tensor<std::int64_t>& ids, LlamaCache<T>* cache) const {
    const std::int64_t past = cache ? cache->length() : 0;
    return forward(ids, positions_from(past, check_ids("LlamaForCausalLM", ids)), cache);
  }

  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    LlamaCache<T>* cache = nullptr) const {
    const Tensor<T> h = model.forward(ids, positions, cache);
    return lm_head ? (*lm_head)(h) : linear(h, model.embed_tokens.weight);
  }

  LlamaModel<T> model;
  std::unique_ptr<Linear<T>> lm_head;  // null when tie_word_embeddings: logits use embed_tokens.weight
};

}  // namespace kiln::nn
