// DeepSeek-V3 decoder with Hugging Face DeepseekV3ForCausalLM's parameter names and semantics:
//   h = embed_tokens(ids)
//   per layer:  h = h + self_attn(input_layernorm(h))            (MLA, nn/mla.hpp)
//               h = h + mlp(post_attention_layernorm(h))         (dense SwiGLU for the first
//                   first_k_dense_replace layers and where layer % moe_layer_freq != 0, else MoE)
//   logits = lm_head(norm(h))                  (lm_head = embed_tokens when tie_word_embeddings)
// plus, for training, the MTP modules (nn/mtp.hpp) as model.layers.{num_hidden_layers + k} and
// the balancing machinery of the MoE layers (nn/moe.hpp, nn/balance.hpp):
//   loss = CE(logits, targets) + λ/D Σ_k CE_k (MTP) + Σ_layers L_bal (when α > 0)
// The balance loss sums over every MoE layer, those of the MTP blocks included; update_balance()
// applies the aux-loss-free bias rule to all of them.
//
// Generation (infer/engine.hpp): make_decode_cache() preallocates per layer the MLA latent cache
// [slots, capacity, 1, kv_lora_rank + qk_rope_head_dim] (infer/kv_cache.hpp) and, for dense MoE
// dispatch, stacks each MoE layer's experts (nn::GenerationDispatch: dense or sparse per layer);
// prefill() runs right-padded prompts through MLA's naive path and writes their latents; decode()
// advances one token per sequence through the absorbed path and the layer's MoE dispatch, with
// device index tensors only: no host reads on a GPU. Speculative
// decoding (the engine's options.speculative) also drafts with MTP module 1: make_decode_cache(
// layout, true) gives its transformer block a cache layer of its own (after the main layers, same
// layout and block table), prefill() then fills it for the prompts too, and mtp_decode() runs the
// module on the main model's final hidden states (decode_with_hidden) and the tokens after them.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kiln/infer/kv_cache.hpp"
#include "kiln/nn/attention.hpp"
#include "kiln/nn/balance.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/nn/mla.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/nn/moe.hpp"
#include "kiln/nn/mtp.hpp"
#include "kiln/ops/cross_entropy.hpp"

namespace kiln::nn {

// Whether layer `layer_idx` of this config uses an MoE mlp (HF's rule).
inline bool is_moe_layer(const DeepseekV3Config& c, std::int64_t layer_idx) {
  return c.n_routed_experts > 0 && layer_idx >= c.first_k_dense_replace && c.moe_layer_freq > 0 &&
         layer_idx % c.moe_layer_freq == 0;
}

template <class T>
struct DecoderOutput {
  Tensor<T> hidden;        // [B, S, hidden]
  Tensor<T> balance_loss;  // the MoE layers' sequence-wise balance loss; undefined when none
};

namespace detail {
// a + b where either may be undefined (no term).
template <class T>
Tensor<T> add_terms(const Tensor<T>& a, const Tensor<T>& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return add(a, b);
}
}  // namespace detail

// What a DeepSeek-V3 model decodes with (make_decode_cache).
template <class T>
struct DeepseekV3DecodeCache {
  infer::KVCache<T> kv;                  // per layer the latent cache [slots, capacity, 1, r + dr]
                                         // (or its FP8 rows: infer::CacheFormat::fp8)
  std::vector<DenseExperts<T>> experts;  // per layer: an MoE layer's stacked experts (a snapshot of
                                         // its weights when the cache was made) for dense dispatch;
                                         // empty for dense layers and sparse dispatch
  std::vector<Tensor<T>> attention_inputs;  // per layer: MLA::stack_inputs(), the same kind of snapshot
                                            // (undefined: two products, as where none is made)
  // Both with one more layer after the main ones when made for speculative decoding: MTP module
  // 1's transformer block, which attends over its own latents like any layer.
};

// What a generation step returns: the logits, and the last layer's hidden states before the
// final norm, h^0 of the MTP modules (speculative decoding feeds them to the drafter).
template <class T>
struct DecodeOutput {
  Tensor<T> logits;
  Tensor<T> hidden;
};

template <class T>
class DeepseekV3DecoderLayer : public Module<T> {
 public:
  using Tables = AttentionContext<compute_t<T>>;

  // experts: where an MoE layer's routed experts live (nn/expert_exchange.hpp; null: all here).
  DeepseekV3DecoderLayer(const DeepseekV3Config& c, std::int64_t layer_index, Generator& gen,
                         std::shared_ptr<ExpertExchange<T>> experts = nullptr)
      : layer_idx(layer_index),
        self_attn(c, gen),
        dense_mlp(is_moe_layer(c, layer_index)
                      ? nullptr
                      : std::make_unique<SwiGLUMLP<T>>(c.hidden_size, c.intermediate_size, c.initializer_range, gen)),
        moe(is_moe_layer(c, layer_index) ? std::make_unique<MoE<T>>(c, gen, std::move(experts)) : nullptr),
        input_layernorm(c.hidden_size, c.rms_norm_eps),
        post_attention_layernorm(c.hidden_size, c.rms_norm_eps),
        rope_dim_(c.qk_rope_head_dim),
        rope_theta_(c.rope_theta) {
    check(c.hidden_act == "silu", "DeepseekV3DecoderLayer", "hidden_act \"", c.hidden_act,
          "\" is not supported (only silu)");
    this->register_module("self_attn", &self_attn);
    if (moe) this->register_module("mlp", moe.get());
    else this->register_module("mlp", dense_mlp.get());
    this->register_module("input_layernorm", &input_layernorm);
    this->register_module("post_attention_layernorm", &post_attention_layernorm);
  }

  using CacheLayer = typename infer::KVCache<T>::Layer;

  // x [B, S, hidden] with rope tables for qk_rope_head_dim (shared by the layers of a forward).
  // The residual adds ride in the products before them (o_proj's, the dense MLP's down_proj:
  // Linear::forward_add) and, in an MoE layer on the fused path, in the combine's sum (from the
  // shared expert's output, whose down_proj adds the residual): no add launches.
  DecoderOutput<T> forward_full(const Tensor<T>& x, const Tables& tables) {
    const Tensor<T> a = self_attn.forward(input_layernorm(x), tables, x);
    const Tensor<T> m = post_attention_layernorm(a);
    if (!moe) return {dense_mlp->forward_add(m, a), Tensor<T>()};
    MoEOutput<T> y = moe->forward_full(m, a);
    return {y.output, y.balance_loss};
  }
  // The same with positions [S] or [B, S].
  DecoderOutput<T> forward_full(const Tensor<T>& x, const Tensor<std::int64_t>& positions) {
    check_defined("DeepseekV3DecoderLayer", x);
    return forward_full(x, rope_tables_on<T>(positions, rope_dim_, rope_theta_, x.device()));
  }
  Tensor<T> forward(const Tensor<T>& x, const Tensor<std::int64_t>& positions) {
    return forward_full(x, positions).hidden;
  }
  Tensor<T> operator()(const Tensor<T>& x, const Tensor<std::int64_t>& positions) { return forward(x, positions); }

  bool is_moe() const { return moe != nullptr; }

  // Generation: prompts [B, S, hidden] whose latents go to the cache (MLA::prefill), and one token
  // per row [n, 1, hidden] (MLA::decode). An MoE layer dispatches densely over `experts` (its
  // stack_experts()), or sparsely (MoE::forward_sparse) when they are empty; a dense layer ignores
  // them.
  Tensor<T> prefill(const Tensor<T>& x, const Tables& tables, const CacheLayer& cache,
                    const infer::PrefillIndex& index, const DenseExperts<T>& experts) const {
    return mlp_block(add(x, self_attn.prefill(input_layernorm(x), tables, cache, index)), experts);
  }
  // In decode the residual adds ride in the products before them (o_proj's, the experts' down
  // projection in dense dispatch): no add launches.
  Tensor<T> decode(const Tensor<T>& x, const Tables& tables, const CacheLayer& cache,
                   const infer::DecodeIndex& index, const DenseExperts<T>& experts,
                   const Tensor<T>& attention_inputs = Tensor<T>()) const {
    return mlp_block(self_attn.decode(input_layernorm(x), tables, cache, index, x, attention_inputs), experts);
  }

  std::int64_t layer_idx;
  MLA<T> self_attn;
  std::unique_ptr<SwiGLUMLP<T>> dense_mlp;  // "mlp" of a dense layer
  std::unique_ptr<MoE<T>> moe;              // "mlp" of an MoE layer
  RMSNorm<T> input_layernorm, post_attention_layernorm;

 private:
  // a + mlp(post_attention_layernorm(a)) with dense MoE dispatch over `experts`, or sparse when
  // they are empty.
  Tensor<T> mlp_block(const Tensor<T>& a, const DenseExperts<T>& experts) const {
    const Tensor<T> m = post_attention_layernorm(a);
    if (!moe) return add(a, (*dense_mlp)(m));
    return experts.defined() ? moe->forward_dense(m, experts, a) : add(a, moe->forward_sparse(m));
  }

  std::int64_t rope_dim_;
  double rope_theta_;
};

template <class T>
using DeepseekV3MTPLayer = MultiTokenPredictionLayer<T, DeepseekV3DecoderLayer<T>>;

// The decoder stack without the output head ("model." in HF names), with the MTP modules.
template <class T>
class DeepseekV3Model : public Module<T> {
 public:
  DeepseekV3Model(const DeepseekV3Config& c, Generator& gen, const std::shared_ptr<ExpertExchange<T>>& experts = nullptr)
      : config(checked_config(c)),
        embed_tokens(c.vocab_size, c.hidden_size, c.initializer_range, gen),
        norm(c.hidden_size, c.rms_norm_eps) {
    this->register_module("embed_tokens", &embed_tokens);
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers.push_back(std::make_unique<DeepseekV3DecoderLayer<T>>(c, i, gen, experts));
      this->register_module("layers." + std::to_string(i), layers.back().get());
    }
    this->register_module("norm", &norm);
    for (std::int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
      const std::int64_t index = c.num_hidden_layers + k;
      mtp_layers.push_back(std::make_unique<DeepseekV3MTPLayer<T>>(c, index, gen, experts));
      this->register_module("layers." + std::to_string(index), mtp_layers.back().get());
    }
  }

  // The whole config, checked once before any layer is built, whatever the layer count (with 0
  // layers no MLA would check qk_rope_head_dim, which forward's rope tables halve).
  static const DeepseekV3Config& checked_config(const DeepseekV3Config& c) {
    const char* op = "DeepseekV3Model";
    check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.moe_intermediate_size > 0 &&
              c.max_position_embeddings > 0,
          op, "vocab_size (", c.vocab_size, "), hidden_size (", c.hidden_size, "), intermediate_size (",
          c.intermediate_size, "), moe_intermediate_size (", c.moe_intermediate_size, ") and max_position_embeddings (",
          c.max_position_embeddings, ") must be positive");
    // Bounded so that layer indices and the shared experts' width cannot overflow.
    constexpr std::int64_t max_layers = 1 << 20;
    check(c.num_hidden_layers >= 0 && c.num_nextn_predict_layers >= 0 && c.num_hidden_layers <= max_layers &&
              c.num_nextn_predict_layers <= max_layers && c.num_hidden_layers + c.num_nextn_predict_layers <= max_layers,
          op, "num_hidden_layers (", c.num_hidden_layers, ") and num_nextn_predict_layers (", c.num_nextn_predict_layers,
          ") must not be negative, and together at most ", max_layers);
    check(c.first_k_dense_replace >= 0 && c.n_routed_experts >= 0 && c.n_shared_experts >= 0, op,
          "first_k_dense_replace (", c.first_k_dense_replace, "), n_routed_experts (", c.n_routed_experts,
          ") and n_shared_experts (", c.n_shared_experts, ") must not be negative");
    std::int64_t shared_width = 0;
    check(!__builtin_mul_overflow(c.moe_intermediate_size, c.n_shared_experts, &shared_width), op,
          "moe_intermediate_size (", c.moe_intermediate_size, ") x n_shared_experts (", c.n_shared_experts,
          ") overflows int64");
    check(c.hidden_act == "silu", op, "hidden_act \"", c.hidden_act, "\" is not supported (only silu)");
    (void)MLA<T>::checked_heads(c);
    if (c.n_routed_experts > 0) (void)MoEGate<T>::checked_routing(c);
    return c;
  }

  // ids [B, S], positions [S] or [B, S] -> the last layer's hidden states [B, S, hidden] BEFORE
  // the final norm, and the summed balance loss of the MoE layers. cu_seqlens: one packed row
  // (B = 1) of several sequences (nn/attention.hpp; positions then usually packed_positions).
  DecoderOutput<T> forward_full(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                                const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
    check_ids("DeepseekV3Model", ids);
    check_positions("DeepseekV3Model", positions, ids.size(0), ids.size(1));
    if (cu_seqlens.defined()) (void)packed_sequences("DeepseekV3Model", cu_seqlens, ids.size(1));
    DecoderOutput<T> out{embed_tokens(ids), Tensor<T>()};
    const AttentionContext<compute_t<T>> tables{
        rope_tables_on<T>(positions, config.qk_rope_head_dim, config.rope_theta, out.hidden.device()), cu_seqlens};
    for (const auto& layer : layers) {
      DecoderOutput<T> l = layer->forward_full(out.hidden, tables);
      out.hidden = l.hidden;
      out.balance_loss = detail::add_terms(out.balance_loss, l.balance_loss);
    }
    return out;
  }
  // The final hidden states after norm.
  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
    return norm(forward_full(ids, positions, cu_seqlens).hidden);
  }

  DeepseekV3Config config;
  Embedding<T> embed_tokens;
  std::vector<std::unique_ptr<DeepseekV3DecoderLayer<T>>> layers;
  RMSNorm<T> norm;
  std::vector<std::unique_ptr<DeepseekV3MTPLayer<T>>> mtp_layers;  // model.layers.{L + k}
};

// What a training forward returns. Every loss is a scalar.
template <class T>
struct DeepseekV3Output {
  Tensor<T> logits;        // [B, S, vocab]
  Tensor<T> loss;          // main_loss + mtp_loss + balance_loss: what to back-propagate
  Tensor<T> main_loss;     // next-token cross-entropy (mean over non-ignored targets)
  Tensor<T> mtp_loss;      // λ/D Σ_k CE_k (0 without MTP modules or with λ = 0)
  Tensor<T> balance_loss;  // Σ over MoE layers of the sequence-wise balance loss (0 when α = 0)
  std::vector<Tensor<T>> mtp_depth_losses;  // CE_k per depth (before λ/D)
};

template <class T>
class DeepseekV3ForCausalLM : public Module<T> {
 public:
  using Config = DeepseekV3Config;  // what builds one (io::load_model_config<Model::Config> reads it)

  // experts: where the MoE layers' routed experts live: null, all in this process; an exchange over
  // W ranks (dist::expert_exchange), expert parallel: each rank holds n_routed_experts / W experts
  // of every MoE layer and every forward is collective (nn/moe.hpp). Generation (prefill, decode)
  // needs every expert here.
  DeepseekV3ForCausalLM(const DeepseekV3Config& c, Generator& gen,
                        const std::shared_ptr<ExpertExchange<T>>& experts = nullptr)
      : model(c, gen, experts),
        lm_head(c.tie_word_embeddings ? nullptr
                                      : std::make_unique<Linear<T>>(c.hidden_size, c.vocab_size, false,
                                                                    c.initializer_range, gen)) {
    this->register_module("model", &model);
    if (lm_head) this->register_module("lm_head", lm_head.get());
  }

  // ids [B, S] -> logits [B, S, vocab] (positions 0..S-1; the MTP modules do not run).
  Tensor<T> forward(const Tensor<std::int64_t>& ids) {
    return forward(ids, positions_from(0, check_ids("DeepseekV3ForCausalLM", ids)));
  }
  Tensor<T> operator()(const Tensor<std::int64_t>& ids) { return forward(ids); }
  // cu_seqlens: one packed row (B = 1) of several sequences, attention kept inside each.
  Tensor<T> forward(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& positions,
                    const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
    return head(model.forward(ids, positions, cu_seqlens));
  }

  // Training forward: ids and next-token targets [B, S] (targets[:, i] follows ids[:, i];
  // ignore_index marks positions to skip) -> logits and the loss pieces. cu_seqlens: one packed
  // row (B = 1) of several sequences at packed_positions; the MTP modules do not run on a packed
  // row (their shifted targets would cross sequence boundaries), so its mtp_loss is 0.
  DeepseekV3Output<T> forward_with_loss(const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& targets,
                                        std::int64_t ignore_index = -100,
                                        const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
    const std::int64_t S = check_ids("DeepseekV3ForCausalLM", ids);
    check_defined("DeepseekV3ForCausalLM", targets);
    check(targets.shape() == ids.shape(), "DeepseekV3ForCausalLM", "targets of shape ", targets.shape(),
          " do not match ids of shape ", ids.shape());
    const bool packed = cu_seqlens.defined();
    const DecoderOutput<T> main =
        model.forward_full(ids, packed ? packed_positions(cu_seqlens) : positions_from(0, S), cu_seqlens);
    DeepseekV3Output<T> out;
    out.logits = head(model.norm(main.hidden));
    out.main_loss = cross_entropy(out.logits, targets, ignore_index);
    Tensor<T> balance = main.balance_loss;
    const double lambda = model.config.mtp_loss_weight;
    if (!model.mtp_layers.empty() && lambda != 0.0 && !packed) {
      MTPLoss<T> mtp = multi_token_prediction_loss<T>(
          model.mtp_layers, main.hidden, ids, targets,
          [this](const Tensor<std::int64_t>& t) { return model.embed_tokens(t); },
          [this](const Tensor<T>& h) { return head(h); }, lambda, ignore_index);
      out.mtp_loss = mtp.loss;
      out.mtp_depth_losses = mtp.depths;
      for (const auto& b : mtp.balance) balance = detail::add_terms(balance, b);
    } else {
      out.mtp_loss = zeros<T>({}, out.logits.device());
    }
    out.balance_loss = balance.defined() ? balance : zeros<T>({}, out.logits.device());
    out.loss = add(add(out.main_loss, out.mtp_loss), out.balance_loss);
    return out;
  }

  // hidden [..., hidden] -> logits (lm_head, or the embedding when tied).
  Tensor<T> head(const Tensor<T>& h) const { return lm_head ? (*lm_head)(h) : linear(h, model.embed_tokens.weight); }

  // ---- generation (driven by infer/engine.hpp; runs without a graph under NoGradGuard) ----

  using DecodeCache = DeepseekV3DecodeCache<T>;

  // The latent caches of `slots` sequences of up to `capacity` tokens each, on the model's device,
  // and the MoE layers' experts stacked for dense dispatch (a snapshot: make a new cache after the
  // weights change).
  // (make_decode_cache(layout): the same in the layout given, paged included. with_mtp: also MTP
  // module 1's block, as one more layer of the same layout, for mtp_decode. format fp8: the
  // latents in e4m3 with 1×128 scales, ops/latent_fp8_cache.hpp. dispatch: how the MoE layers run,
  // nn::GenerationDispatch; a sparse layer gets no stacked experts.)
  DecodeCache make_decode_cache(const infer::CacheLayout& layout, bool with_mtp = false,
                                infer::CacheFormat format = infer::CacheFormat::model,
                                GenerationDispatch dispatch = GenerationDispatch::automatic) const {
    const DeepseekV3Config& c = model.config;
    check(!with_mtp || mtp_modules() > 0, "DeepseekV3ForCausalLM::make_decode_cache",
          "a cache with the MTP module's layer needs a model with MTP modules (num_nextn_predict_layers >= 1), "
          "this one has none");
    std::vector<const DeepseekV3DecoderLayer<T>*> layers;
    for (const auto& layer : model.layers) layers.push_back(layer.get());
    if (with_mtp) layers.push_back(model.mtp_layers.front().get());
    DecodeCache cache{infer::KVCache<T>::latent(static_cast<std::int64_t>(layers.size()), layout, c.kv_lora_rank,
                                                c.qk_rope_head_dim, device(), format),
                      {}, {}};
    for (const auto* layer : layers) {
      const bool dense =
          layer->moe && layer->moe->generation_dispatch(dispatch, device()) == GenerationDispatch::dense;
      cache.experts.push_back(dense ? layer->moe->stack_experts() : DenseExperts<T>());
      cache.attention_inputs.push_back(layer->self_attn.stack_inputs());
    }
    return cache;
  }
  DecodeCache make_decode_cache(std::int64_t slots, std::int64_t capacity) const {
    return make_decode_cache(infer::CacheLayout::contiguous(slots, capacity));
  }

  // Prompts ids [B, S] (right-padded: row b's tokens are ids[b, 0 .. lengths_b − 1], the rest any
  // valid id) at positions 0..S−1 through the training path's attention (MLA's naive path); every
  // layer's latents are written to the targets of `index` (target r gets prompt index.rows[r]).
  // Returns the logits of each target's last prompt token, [R, vocab]: right padding leaves them
  // exact, as the causal mask keeps the padding after them out of their attention.
  // With a cache made with_mtp, MTP module 1's layer gets the prompts' rows too: at position i the
  // block's input from h_i and the embedding of token i + 1 (as in training), so every row but
  // the last prompt token's, which waits for the first drawn token (mtp_decode writes it).
  Tensor<T> prefill(const Tensor<std::int64_t>& ids, const infer::PrefillIndex& index, DecodeCache& cache) const {
    return prefill_with_hidden(ids, index, cache).logits;
  }
  // The same, with each target's last hidden state [R, hidden] (before the final norm).
  DecodeOutput<T> prefill_with_hidden(const Tensor<std::int64_t>& ids, const infer::PrefillIndex& index,
                                      DecodeCache& cache) const {
    const char* op = "DeepseekV3ForCausalLM::prefill";
    check_ids(op, ids);
    check(ids.size(0) == index.batch && ids.size(1) == index.seq, op, "ids of shape ", ids.shape(),
          " do not match the prefill index's prompts [", index.batch, ", ", index.seq, "]");
    check_cache(op, cache);
    const Tensor<T> embedded = model.embed_tokens(ids);
    const auto tables = rope_tables_on<T>(positions_from(0, ids.size(1)), model.config.qk_rope_head_dim,
                                          model.config.rope_theta, embedded.device());
    Tensor<T> h = embedded;
    for (std::size_t i = 0; i < model.layers.size(); ++i)
      h = model.layers[i]->prefill(h, tables, cache.kv.layer(static_cast<std::int64_t>(i)), index, cache.experts[i]);
    if (has_mtp_layer(cache)) {
      // The embeddings one position ahead; the last column (no token after it yet) gets zeros,
      // and the row it writes is rewritten before any query reads it.
      const std::int64_t B = ids.size(0), S = ids.size(1);
      const Tensor<T> pad = zeros<T>({B, 1, embedded.size(2)}, embedded.device());
      const Tensor<T> ahead = S == 1 ? pad : cat(std::vector<Tensor<T>>{narrow(embedded, 1, 1, S - 1), pad}, 1);
      const std::int64_t m = mtp_cache_layer();
      (void)model.mtp_layers.front()->prefill(model.mtp_layers.front()->merge(h, ahead), tables, cache.kv.layer(m),
                                              index, cache.experts[static_cast<std::size_t>(m)]);
    }
    // Norm and head only where logits are needed: each target's last prompt token.
    const Tensor<T> last = index_select(reshape(h, {-1, h.size(2)}), 0, index.last);
    return {head(model.norm(last)), last};
  }

  // One decode step: ids [n] (each row's newest token, on the model's device) at index.positions
  // of index.slots -> logits [n, vocab] of the token after it. Only device tensors: no host reads.
  // With index.tokens = 2, ids [n, 2] (a token and the draft after it, speculative decoding) at
  // positions index.positions and + 1 -> logits [n, 2, vocab], row t predicting the token after t.
  Tensor<T> decode(const Tensor<std::int64_t>& ids, const infer::DecodeIndex& index, DecodeCache& cache) const {
    const DecodeOutput<T> out = decode_with_hidden(ids, index, cache);
    return index.tokens == 1 ? reshape(out.logits, {ids.size(0), -1}) : out.logits;
  }
  // The same with the last layer's hidden states (before the final norm): logits [n, tokens,
  // vocab] and hidden [n, tokens, hidden], whatever the token count.
  DecodeOutput<T> decode_with_hidden(const Tensor<std::int64_t>& ids, const infer::DecodeIndex& index,
                                     DecodeCache& cache) const {
    const char* op = "DeepseekV3ForCausalLM::decode";
    check_defined(op, ids);
    const std::int64_t tokens = index.tokens;
    check(ids.dim() == (tokens == 1 ? 1 : 2) && ids.size(0) == index.size() && (tokens == 1 || ids.size(1) == tokens),
          op, "ids of shape ", ids.shape(), " must be ", tokens == 1 ? "[n]" : "[n, tokens]", " with n = ",
          index.size(), " rows of the decode index and tokens = ", tokens);
    check_cache(op, cache);
    const std::int64_t n = ids.size(0);
    Tensor<T> h = model.embed_tokens(reshape(ids, {n, tokens}));  // [n, tokens, hidden]
    const auto tables = decode_rope_tables<T>(index.positions, tokens, model.config.qk_rope_head_dim,
                                              model.config.rope_theta, h.device());
    for (std::size_t i = 0; i < model.layers.size(); ++i)
      h = model.layers[i]->decode(h, tables, cache.kv.layer(static_cast<std::int64_t>(i)), index, cache.experts[i],
                                  i < cache.attention_inputs.size() ? cache.attention_inputs[i] : Tensor<T>());
    return {head(model.norm(h)), h};
  }

  // MTP module 1 as a drafter (speculative decoding), over the cache layer a with_mtp cache gives
  // it: at the positions of `index` (tokens 1 or 2 a row), hidden [n, tokens, hidden] — the main
  // model's final hidden states there (decode_with_hidden, prefill_with_hidden) — and ids
  // [n, tokens], the tokens one position further -> logits [n, tokens, vocab], row t predicting
  // the token two positions after t's. The block sits at the same positions as the main model's
  // tokens, as in training (multi_token_prediction_loss), and writes its latent rows there. Device
  // tensors only.
  Tensor<T> mtp_decode(const Tensor<T>& hidden, const Tensor<std::int64_t>& ids, const infer::DecodeIndex& index,
                       DecodeCache& cache) const {
    const char* op = "DeepseekV3ForCausalLM::mtp_decode";
    check_defined(op, hidden, ids);
    check_cache(op, cache);
    check(has_mtp_layer(cache), op, "the cache has no layer for the MTP module: make it with make_decode_cache(layout, ",
          "true)");
    const std::int64_t n = index.size(), tokens = index.tokens;
    check(ids.numel() == n * tokens && hidden.shape() == Shape{n, tokens, model.config.hidden_size}, op,
          "needs hidden [n, tokens, hidden] and ids of n·tokens entries for n = ", n, " rows of tokens = ", tokens,
          ", got shapes ", hidden.shape(), " and ", ids.shape());
    const auto& mtp = *model.mtp_layers.front();
    const std::int64_t m = mtp_cache_layer();
    const auto tables = decode_rope_tables<T>(index.positions, tokens, model.config.qk_rope_head_dim,
                                              model.config.rope_theta, hidden.device());
    const Tensor<T> x = mtp.merge(hidden, model.embed_tokens(reshape(ids, {n, tokens})));
    const auto mi = static_cast<std::size_t>(m);
    const Tensor<T> h = mtp.decode(x, tables, cache.kv.layer(m), index, cache.experts[mi],
                                   mi < cache.attention_inputs.size() ? cache.attention_inputs[mi] : Tensor<T>());
    return head(mtp.shared_head.norm(h));
  }

  // The MTP modules the model has (config.num_nextn_predict_layers).
  std::int64_t mtp_modules() const { return static_cast<std::int64_t>(model.mtp_layers.size()); }

  Device device() const { return model.embed_tokens.weight.device(); }
  std::int64_t vocab_size() const { return model.config.vocab_size; }
  std::int64_t max_positions() const { return model.config.max_position_embeddings; }

  // Every MoE layer with its index in model.layers (MTP blocks included).
  std::vector<std::pair<std::int64_t, MoE<T>*>> moe_layers() const {
    std::vector<std::pair<std::int64_t, MoE<T>*>> out;
    for (const auto& l : model.layers)
      if (l->moe) out.emplace_back(l->layer_idx, l->moe.get());
    for (const auto& l : model.mtp_layers)
      if (l->moe) out.emplace_back(l->layer_idx, l->moe.get());
    return out;
  }

  // The aux-loss-free rule for every MoE layer with the batch load counted since the last call
  // (call after each optimizer step); γ = config.aux_loss_free_gamma (0 only resets the counts).
  void update_balance() { update_balance(model.config.aux_loss_free_gamma); }
  void update_balance(double gamma) {
    for (auto& [index, moe] : moe_layers()) moe->update_bias(gamma);
  }

  // Per MoE layer: the load of the current batch (training forwards since the last
  // update_balance) and its MaxVio.
  std::vector<LayerLoad> load_stats() const {
    std::vector<LayerLoad> out;
    for (auto& [index, moe] : moe_layers()) out.push_back({index, moe->batch_load()});
    return out;
  }
  // Per MoE layer: the load of the most recent forward (evaluation included).
  std::vector<LayerLoad> last_load_stats() const {
    std::vector<LayerLoad> out;
    for (auto& [index, moe] : moe_layers()) out.push_back({index, moe->last_load()});
    return out;
  }

  // The parameters split by placement: the routed experts held here (expert parallel: this rank's,
  // which data parallelism takes as local parameters) and the rest, which every rank holds.
  std::vector<Tensor<T>> expert_parameters() const {
    std::vector<Tensor<T>> out;
    for (auto& [index, moe] : moe_layers())
      for (const auto& p : moe->expert_parameters()) out.push_back(p);
    return out;
  }
  std::vector<Tensor<T>> replicated_parameters() const {
    std::set<const void*> experts;  // by first element: an MoE layer's experts share one allocation
    for (const auto& p : expert_parameters()) experts.insert(p.data());
    std::vector<Tensor<T>> out;
    for (const auto& p : this->parameters())
      if (!experts.count(p.data())) out.push_back(p);
    return out;
  }

  DeepseekV3Model<T> model;
  std::unique_ptr<Linear<T>> lm_head;  // null when tie_word_embeddings

 private:
  // A cache of the main layers, or of them and the MTP module's (make_decode_cache with_mtp).
  void check_cache(const char* op, const DecodeCache& cache) const {
    const auto layers = static_cast<std::int64_t>(model.layers.size());
    if (!(mtp_modules() > 0 && cache.kv.defined() && cache.kv.num_layers() == layers + 1))
      cache.kv.check_layers(op, layers);
    check(static_cast<std::int64_t>(cache.experts.size()) == cache.kv.num_layers(), op,
          "the cache holds stacked experts of ", cache.experts.size(), " layers and latents of ",
          cache.kv.num_layers());
  }
  bool has_mtp_layer(const DecodeCache& cache) const {
    return cache.kv.num_layers() == static_cast<std::int64_t>(model.layers.size()) + 1;
  }
  // The MTP module's layer in a with_mtp cache: after the main ones.
  std::int64_t mtp_cache_layer() const { return static_cast<std::int64_t>(model.layers.size()); }
};

}  // namespace kiln::nn
