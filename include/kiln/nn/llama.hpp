// Llama-style dense decoder, with Hugging Face LlamaForCausalLM's parameter names and semantics:
//   h = embed_tokens(ids)
//   per layer:  h = h + self_attn(input_layernorm(h));  h = h + mlp(post_attention_layernorm(h))
//   logits = lm_head(norm(h))      (lm_head = embed_tokens when tie_word_embeddings)
// Attention is grouped-query (GQA): num_attention_heads query heads share num_key_value_heads
// key/value heads, query head h reading kv head h / (num_attention_heads / num_key_value_heads)
// (HF's repeat_kv order); rope in the half_split layout (HF's rotate_half) with rope_theta; scale
// 1/sqrt(head_dim); causal. Not implemented: rope_scaling (Llama 3 frequency rescaling).
//
// Generation (infer/engine.hpp): make_decode_cache() preallocates per layer the rotated keys and
// the values [slots, capacity, num_key_value_heads, head_dim] (infer/kv_cache.hpp); prefill()
// runs right-padded prompts through the training path and writes their keys/values; decode()
// advances one token per sequence (cache_write at its position, decode_attention over its
// length), with device index tensors only: no host reads.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/infer/kv_cache.hpp"
#include "kiln/nn/attention.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/ops/decode_attention.hpp"
#include "kiln/ops/gather.hpp"

namespace kiln::nn {

// What a Llama model decodes with (make_decode_cache): per layer the rotated keys and the values.
template <class T>
struct LlamaDecodeCache {
  infer::KVCache<T> kv;
};

template <class T>
class LlamaAttention : public Module<T> {
 public:
  using Tables = AttentionContext<compute_t<T>>;

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

  using CacheLayer = typename infer::KVCache<T>::Layer;

  // x [B, S, hidden] with rope tables for head_dim (of positions [S] or [B, S]) -> [B, S, hidden].
  // A packed context (tables.cu_seqlens, B = 1) keeps attention inside each sequence.
  // With `residual` (x's shape: the layer's input), residual + the attention, added in o_proj's
  // product (Linear::forward_add).
  Tensor<T> forward(const Tensor<T>& x, const Tables& tables, const Tensor<T>& residual = Tensor<T>()) const {
    return attend(project(x, tables), tables.cu_seqlens, residual);
  }

  // Prefill: forward() over right-padded prompts, their keys and values written to the cache's
  // targets (infer::write_prompt).
  Tensor<T> prefill(const Tensor<T>& x, const Tables& tables, const CacheLayer& cache,
                    const infer::PrefillIndex& index) const {
    const Parts p = project(x, tables);
    infer::write_prompt(cache.k, cache.table, index, p.k);
    infer::write_prompt(cache.v, cache.table, index, p.v);
    return attend(p);
  }

  // Decode: one new token per row, x [n, 1, hidden] with rope tables [n, 1, head_dim/2] of its
  // position. Its key and value go to the cache at index.positions; its query attends over the
  // first index.lengths cached tokens of its slot. -> [n, 1, hidden].
  Tensor<T> decode(const Tensor<T>& x, const Tables& tables, const CacheLayer& cache,
                   const infer::DecodeIndex& index) const {
    check(x.defined() && x.dim() == 3 && x.size(1) == 1, "LlamaAttention",
          "decode takes one token per row, x [n, 1, hidden]; got shape ", x.defined() ? x.shape() : Shape{});
    const Parts p = project(x, tables);
    const std::int64_t n = p.B;
    write_cache_rows(cache.k, cache.table, index.slots, index.positions, p.k);
    write_cache_rows(cache.v, cache.table, index.slots, index.positions, p.v);
    const Tensor<T> o = infer::attend_cached<T>(reshape(p.q, {n, num_heads, head_dim}), cache, index.slots,
                                                index.lengths, 1.0 / std::sqrt(double(head_dim)));
    return o_proj(reshape(o, {n, 1, num_heads * head_dim}));
  }

  std::int64_t num_heads, num_key_value_heads, head_dim;
  Linear<T> q_proj, k_proj, v_proj, o_proj;

 private:
  // Rotated queries [B, S, H, D], rotated keys and values [B, S, Hkv, D]: the cache's row layout.
  struct Parts {
    std::int64_t B, S;
    Tensor<T> q, k, v;
  };

  Parts project(const Tensor<T>& x, const Tables& tables) const {
    check_defined("LlamaAttention", x);
    check(x.dim() == 3 && x.size(2) == q_proj.in_features, "LlamaAttention", "input of shape ", x.shape(),
          " is not [B, S, hidden] with hidden = ", q_proj.in_features);
    const std::int64_t B = x.size(0), S = x.size(1), Hkv = num_key_value_heads;
    // q, k and v read the same x: one product where they stack (linears_on_one_input).
    const std::vector<Tensor<T>> qkv = linears_on_one_input<T>(x, {&q_proj, &k_proj, &v_proj});
    return {B, S, rope(reshape(qkv[0], {B, S, num_heads, head_dim}), tables, RopeLayout::half_split),
            rope(reshape(qkv[1], {B, S, Hkv, head_dim}), tables, RopeLayout::half_split),
            reshape(qkv[2], {B, S, Hkv, head_dim})};
  }

  // Causal attention over the projections: query heads grouped per kv head, [B, Hkv, G, S, D]
  // against keys [B, Hkv, 1, S, D]; the product broadcasts the shared key over the group, so
  // repeated keys are never materialised.
  // cu_seqlens: a packed row (B = 1), attention kept inside each sequence.
  Tensor<T> attend(const Parts& p, const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>(),
                   const Tensor<T>& residual = Tensor<T>()) const {
    const std::int64_t B = p.B, S = p.S, Hkv = num_key_value_heads, G = num_heads / Hkv;
    check(!cu_seqlens.defined() || B == 1, "LlamaAttention", "packed sequences (cu_seqlens) need one row, B = 1; got B = ",
          B);
    const double scale = 1.0 / std::sqrt(double(head_dim));
    if (use_fused_attention<T>(p.q.device(), head_dim, head_dim)) {  // grouped kv heads read in place
      const Tensor<T> o = fused_causal_attention(transpose(p.q, 1, 2), transpose(p.k, 1, 2), transpose(p.v, 1, 2), scale,
                                                 cu_seqlens);
      return output(reshape(transpose(o, 1, 2), {B, S, num_heads * head_dim}), residual);
    }
    const Tensor<T> qg = reshape(transpose(p.q, 1, 2), {B, Hkv, G, S, head_dim});
    const Tensor<T> k = unsqueeze(transpose(p.k, 1, 2), 2), v = unsqueeze(transpose(p.v, 1, 2), 2);
    const Tensor<T> o = causal_attention(qg, k, v, scale, cu_seqlens);
    return output(reshape(transpose(reshape(o, {B, num_heads, S, head_dim}), 1, 2), {B, S, num_heads * head_dim}),
                  residual);
  }
  // o_proj of the heads concatenated per token (+ residual, in its product, when given).
  Tensor<T> output(const Tensor<T>& heads, const Tensor<T>& residual) const {
    return residual.defined() ? o_proj.forward_add(heads, residual) : o_proj(heads);
  }

 public:
  // The head split of c, checked (also by LlamaModel, which checks the config once for every layer count).
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

  using Tables = AttentionContext<compute_t<T>>;
  using CacheLayer = typename infer::KVCache<T>::Layer;

  Tensor<T> forward(const Tensor<T>& h, const Tables& tables) const {
    return block(self_attn.forward(input_layernorm(h), tables, h));
  }
  Tensor<T> prefill(const Tensor<T>& h, const Tables& tables, const CacheLayer& cache,
                    const infer::PrefillIndex& index) const {
    return block(add(h, self_attn.prefill(input_layernorm(h), tables, cache, index)));
  }
  Tensor<T> decode(const Tensor<T>& h, const Tables& tables, const CacheLayer& cache,
                   const infer::DecodeIndex& index) const {
    return block(add(h, self_attn.decode(input_layernorm(h), tables, cache, index)));
  }

  LlamaAttention<T> self_attn;
  SwiGLUMLP<T> mlp;
  RMSNorm<T> input_layernorm, post_attention_layernorm;

 private:
  // The MLP half of the layer, after attention's residual a (added in down_proj's product).
  Tensor<T> block(const Tensor<T>& a) const { return mlp.forward_add(post_attention_layernorm(a), a); }
};

// The decoder stack without the output head ("model." in HF names).
template <class T>
class LlamaModel : public Module<T> {
 public:
  LlamaModel(const LlamaConfig& c, Generator& gen)
      : config(checked_config(c)),
        embed_tokens(c.vocab_size, c.hidden_size, c.initializer_range, gen),
        norm(c.hidden_size, c.rms_norm_eps) {
    this->register_module("embed_tokens", &embed_tokens);
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers.push_back(std::make_unique<LlamaDecoderLayer<T>>(c, gen));
      this->register_module("layers." + std::to_string(i), layers.back().get());
    }
    this->register_module("norm", &norm);
  }

  // The whole config, checked once whatever the layer count (with 0 layers no attention layer
  // would check its heads, and forward divides by them for the rope tables).
  static const LlamaConfig& checked_config(const LlamaConfig& c) {
    check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers >= 0 &&
              c.max_position_embeddings > 0,
          "LlamaModel", "vocab_size (", c.vocab_size, "), hidden_size (", c.hidden_size, "), intermediate_size (",
          c.intermediate_size, ") and max_position_embeddings (", c.max_position_embeddings,
          ") must be positive and num_hidden_layers (", c.num_hidden_layers, ") not negative");
    (void)LlamaAttention<T>::checked_head_dim(c);
    return c;
  }

  // ids [B, S], positions [S] or [B, S] -> final hidden states [B, S, hidden] (after norm).
  // cu_seqlens: one packed row (B = 1) of several sequences (nn/attention.hpp; positions then
  // usually packed_positions(cu_seqlens)).
  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) const {
    check_ids("LlamaModel", ids);
    check_positions("LlamaModel", positions, ids.size(0), ids.size(1));
    if (cu_seqlens.defined()) (void)packed_sequences("LlamaModel", cu_seqlens, ids.size(1));
    Tensor<T> h = embed_tokens(ids);
    const AttentionContext<compute_t<T>> tables{
        rope_tables_on<T>(positions, config.resolved_head_dim(), config.rope_theta, h.device()), cu_seqlens};
    for (const auto& layer : layers) h = layer->forward(h, tables);
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
  using Config = LlamaConfig;  // what builds one (io::load_model_config<Model::Config> reads it)

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

  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) const {
    return head(model.forward(ids, positions, cu_seqlens));
  }

  // hidden [..., hidden] -> logits (lm_head, or the embedding when tied).
  Tensor<T> head(const Tensor<T>& h) const { return lm_head ? (*lm_head)(h) : linear(h, model.embed_tokens.weight); }

  // ---- generation (driven by infer/engine.hpp; runs without a graph under NoGradGuard) ----

  using DecodeCache = LlamaDecodeCache<T>;

  // The keys and values of `slots` sequences of up to `capacity` tokens each, on the model's device
  // (contiguous; or in the layout given, paged included).
  DecodeCache make_decode_cache(const infer::CacheLayout& layout) const {
    const std::int64_t d = model.config.resolved_head_dim();
    return {infer::KVCache<T>::separate(static_cast<std::int64_t>(model.layers.size()), layout,
                                        model.config.num_key_value_heads, d, d, device())};
  }
  DecodeCache make_decode_cache(std::int64_t slots, std::int64_t capacity) const {
    return make_decode_cache(infer::CacheLayout::contiguous(slots, capacity));
  }

  // Prompts ids [B, S] (right-padded: row b's tokens are ids[b, 0 .. lengths_b − 1], the rest any
  // valid id) at positions 0..S−1 through the training path; every layer's keys and values are
  // written to the targets of `index` (target r gets prompt index.rows[r]). Returns the logits
  // of each target's last prompt token, [R, vocab]: right padding leaves them exact, as the causal
  // mask keeps the padding after them out of their attention.
  Tensor<T> prefill(const Tensor<std::int64_t>& ids, const infer::PrefillIndex& index, DecodeCache& cache) const {
    check_ids("LlamaForCausalLM::prefill", ids);
    check(ids.size(0) == index.batch && ids.size(1) == index.seq, "LlamaForCausalLM::prefill", "ids of shape ",
          ids.shape(), " do not match the prefill index's prompts [", index.batch, ", ", index.seq, "]");
    cache.kv.check_layers("LlamaForCausalLM::prefill", static_cast<std::int64_t>(model.layers.size()));
    const std::int64_t S = ids.size(1);
    Tensor<T> h = model.embed_tokens(ids);
    const auto tables = rope_tables_on<T>(positions_from(0, S), model.config.resolved_head_dim(),
                                          model.config.rope_theta, h.device());
    for (std::size_t i = 0; i < model.layers.size(); ++i)
      h = model.layers[i]->prefill(h, tables, cache.kv.layer(static_cast<std::int64_t>(i)), index);
    // Norm and head only where logits are needed: each target's last prompt token.
    const Tensor<T> last = index_select(reshape(h, {-1, h.size(2)}), 0, index.last);
    return head(model.norm(last));
  }

  // One decode step: ids [n] (each row's newest token, on the model's device) at index.positions
  // of index.slots -> logits [n, vocab] of the token after it. Only device tensors: no host reads.
  Tensor<T> decode(const Tensor<std::int64_t>& ids, const infer::DecodeIndex& index, DecodeCache& cache) const {
    check_defined("LlamaForCausalLM::decode", ids);
    check(ids.dim() == 1 && ids.size(0) == index.size() && index.tokens == 1, "LlamaForCausalLM::decode",
          "ids of shape ", ids.shape(), " must be [n] with n = ", index.size(),
          " rows of the decode index, one token each (index.tokens = ", index.tokens, ")");
    cache.kv.check_layers("LlamaForCausalLM::decode", static_cast<std::int64_t>(model.layers.size()));
    const std::int64_t n = ids.size(0);
    Tensor<T> h = model.embed_tokens(reshape(ids, {n, 1}));  // [n, 1, hidden]
    const auto tables = decode_rope_tables<T>(index.positions, model.config.resolved_head_dim(),
                                              model.config.rope_theta, h.device());
    for (std::size_t i = 0; i < model.layers.size(); ++i)
      h = model.layers[i]->decode(h, tables, cache.kv.layer(static_cast<std::int64_t>(i)), index);
    return reshape(head(model.norm(h)), {n, -1});
  }

  Device device() const { return model.embed_tokens.weight.device(); }
  std::int64_t vocab_size() const { return model.config.vocab_size; }
  std::int64_t max_positions() const { return model.config.max_position_embeddings; }

  LlamaModel<T> model;
  std::unique_ptr<Linear<T>> lm_head;  // null when tie_word_embeddings: logits use embed_tokens.weight
};

}  // namespace kiln::nn
