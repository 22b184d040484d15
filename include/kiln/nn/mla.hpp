// Multi-head Latent Attention (MLA), DeepSeek-V2/V3 (DeepSeek-V3 report §2.1.1), with Hugging
// Face DeepseekV3Attention's parameter names and semantics.
//
// Per token x [hidden], with H heads, nope/rope/value head dims dn, dr, dv and latent rank r:
//   q      = q_b_proj(q_a_layernorm(q_a_proj(x)))  (or q_proj(x) when q_lora_rank is absent)
//            -> per head [dn + dr] = (q_nope, q_pe)
//   kv_a   = kv_a_proj_with_mqa(x) -> [r + dr] = (compressed_kv, k_pe)
//   c      = kv_a_layernorm(compressed_kv)          the latent that a decoder caches
//   kv     = kv_b_proj(c) -> per head [dn + dv] = (k_nope, v)
//   q_pe, k_pe rotated by rope; k_pe is ONE key shared by every head (decoupled rope)
//   score  = (q_nope·k_nope + q_pe·k_pe) / sqrt(dn + dr), causal softmax over keys
//   out    = o_proj(concat over heads of Σ_j p_j v_j)
//
// Rope layout: interleaved (pairs (x[2i], x[2i+1])). Hugging Face's modeling_deepseek views the
// rope part as [dr/2, 2], transposes it (x[2i] to slot i, x[2i+1] to slot i + dr/2), then rotates
// with rotate_half. Rotating the pairs (2i, 2i+1) in place gives the same numbers in the original
// order; q_pe and k_pe get the same permutation, so every q_pe·k_pe, hence every logit, is the same:
// HF DeepSeek-V3 checkpoints run unchanged.
//
// Not implemented: yarn rope scaling and its softmax mscale (config rope_scaling); the scale is
// plain 1/sqrt(dn + dr). q_a_layernorm and kv_a_layernorm use eps 1e-6, as in HF (which builds them
// with the default eps, not rms_norm_eps).
//
// Two equivalent paths (same function of the parameters, different cost):
//   naive (forward): up-project every key and value with kv_b_proj, attend per head. Training.
//   absorbed (forward_absorbed): with kv_b_proj.weight viewed as [H, dn + dv, r] = (W_UK; W_UV),
//     q_nope·k_nope = q_nope·(W_UK c) = (q_nopeᵀ W_UK)·c, so the query moves into latent space,
//     q_lat = q_nope W_UK [r], and scores read the latent c directly; likewise
//     Σ_j p_j v_j = W_UV (Σ_j p_j c_j). Keys and values are never formed: a decoder caches only
//     c [r] and the rotated k_pe [dr] per token — the point of MLA.
//
// Generation (infer/engine.hpp) uses both, over a preallocated latent cache (infer/kv_cache.hpp:
// per token [c | k_pe], r + dr numbers):
//   prefill: the prompts through the naive path (as in training; right padding is exact for the
//     valid positions under the causal mask), their [c | k_pe] written to the cache;
//   decode: one new token per sequence (or two: a token and its MTP draft) through the absorbed
//     path: its [c | k_pe] is written at its position, then with q = [q_lat | q_pe] per head,
//     score_j = q·[c_j | k_pe_j] is one dot product over the cache row, o_lat = Σ_j p_j c_j reads
//     the same rows' first r columns (decode_attention, one kv head shared by all H query heads),
//     and out = o_proj(W_UV o_lat).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>

#include "kiln/core/environment.hpp"
#include "kiln/infer/kv_cache.hpp"
#include "kiln/nn/attention.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/decode_attention.hpp"

namespace kiln::nn {

template <class T>
class MLA : public Module<T> {
 public:
  using Tables = AttentionContext<compute_t<T>>;

  MLA(const DeepseekV3Config& c, Generator& gen)
      : num_heads(checked_heads(c)),
        qk_nope_head_dim(c.qk_nope_head_dim),
        qk_rope_head_dim(c.qk_rope_head_dim),
        v_head_dim(c.v_head_dim),
        kv_lora_rank(c.kv_lora_rank),
        rope_theta(c.rope_theta),
        softmax_scale(1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim))),
        q_proj(c.q_lora_rank ? nullptr
                             : std::make_unique<Linear<T>>(c.hidden_size, num_heads * q_head_dim(), false,
                                                           c.initializer_range, gen)),
        q_a_proj(c.q_lora_rank ? std::make_unique<Linear<T>>(c.hidden_size, *c.q_lora_rank, c.attention_bias,
                                                             c.initializer_range, gen)
                               : nullptr),
        q_a_layernorm(c.q_lora_rank ? std::make_unique<RMSNorm<T>>(*c.q_lora_rank, 1e-6) : nullptr),
        q_b_proj(c.q_lora_rank ? std::make_unique<Linear<T>>(*c.q_lora_rank, num_heads * q_head_dim(), false,
                                                             c.initializer_range, gen)
                               : nullptr),
        kv_a_proj_with_mqa(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, c.attention_bias,
                           c.initializer_range, gen),
        kv_a_layernorm(c.kv_lora_rank, 1e-6),
        kv_b_proj(c.kv_lora_rank, num_heads * (c.qk_nope_head_dim + c.v_head_dim), false, c.initializer_range, gen),
        o_proj(num_heads * c.v_head_dim, c.hidden_size, c.attention_bias, c.initializer_range, gen) {
    if (q_proj) {
      this->register_module("q_proj", q_proj.get());
    } else {
      this->register_module("q_a_proj", q_a_proj.get());
      this->register_module("q_a_layernorm", q_a_layernorm.get());
      this->register_module("q_b_proj", q_b_proj.get());
    }
    this->register_module("kv_a_proj_with_mqa", &kv_a_proj_with_mqa);
    this->register_module("kv_a_layernorm", &kv_a_layernorm);
    this->register_module("kv_b_proj", &kv_b_proj);
    this->register_module("o_proj", &o_proj);
  }

  // Naive path. x [B, S, hidden]; positions [S] or [B, S] (rope angles), default 0..S-1.
  Tensor<T> forward(const Tensor<T>& x, const Tensor<std::int64_t>& positions) const {
    return forward(x, tables_for(positions, x));
  }
  Tensor<T> forward(const Tensor<T>& x) const { return forward(x, positions_from(0, seq_len(x))); }
  Tensor<T> operator()(const Tensor<T>& x, const Tensor<std::int64_t>& positions) const { return forward(x, positions); }

  // Naive path with rope tables for qk_rope_head_dim built by the caller (shared across layers);
  // a packed context (tables.cu_seqlens, B = 1) keeps attention inside each sequence. With
  // `residual` (x's shape: the layer's input), residual + the attention, added in o_proj's product.
  Tensor<T> forward(const Tensor<T>& x, const Tables& tables, const Tensor<T>& residual = Tensor<T>()) const {
    return attend_naive(project(x, tables), tables.cu_seqlens, residual);
  }

  // Absorbed path over the latent: the same function as forward() (queries moved into latent
  // space, keys and values never formed), positions [S] or [B, S], default 0..S-1.
  Tensor<T> forward_absorbed(const Tensor<T>& x, const Tensor<std::int64_t>& positions) const {
    return forward_absorbed(x, tables_for(positions, x));
  }
  Tensor<T> forward_absorbed(const Tensor<T>& x) const { return forward_absorbed(x, positions_from(0, seq_len(x))); }

  Tensor<T> forward_absorbed(const Tensor<T>& x, const Tables& tables) const {
    check(!tables.packed(), "MLA::forward_absorbed", "packed sequences (cu_seqlens) are for training: use forward()");
    const Parts p = project(x, tables);
    const std::int64_t B = p.B, S = p.S, H = num_heads, r = kv_lora_rank;
    const Tensor<T> q_lat = matmul(p.q_nope, w_uk());  // [B, H, S, r]
    const Tensor<T> scores = add(shared_key_scores(q_lat, p.c_kv), shared_key_scores(p.q_pe, p.k_pe));
    const Tensor<T> probs = causal_softmax(scores, softmax_scale);  // [B, H, S, S]
    const Tensor<T> o_lat = reshape(matmul(reshape(probs, {B, H * S, S}), p.c_kv), {B, H, S, r});
    return output(matmul(o_lat, transpose(w_uv(), -1, -2)));  // [B, H, S, dv]
  }

  // Prefill: prompts x [B, S, hidden] (right-padded; rope tables of positions 0..S-1) through the
  // naive path, their [c | k_pe] written to `cache`'s targets (infer::write_prompt). -> [B, S, hidden].
  Tensor<T> prefill(const Tensor<T>& x, const Tables& tables, const typename infer::KVCache<T>::Layer& cache,
                    const infer::PrefillIndex& index) const {
    const Parts p = project(x, tables);
    check_latent_cache(cache);
    infer::write_latent_prompt<T>(cache, index, latent_row(p));
    return attend_naive(p);
  }

  // Decode: T = index.tokens new tokens per row (1, or 2: a token and its MTP draft), x [n, T,
  // hidden] at positions index.positions .. + T − 1, rope tables [n, T, dr/2] (decode_rope_tables).
  // Their [c | k_pe] rows go to the cache first; then the absorbed path, query t of a row attending
  // its slot's cached tokens up to its own (infer::attend_cached_tokens). -> [n, T, hidden], plus
  // `residual` (the layer's input, x's shape) when given: added in o_proj's product. No graph.
  //
  // The step assembles two tensors in place, so that no op copies a slice or concatenates:
  //   latent [n, T, r + dr]: the cache rows [c | k_pe], c normalised and k_pe rotated straight from
  //     their slices of kv_a's output;
  //   q [n, T, H, r + dr]: [q_lat | q_pe], q_lat = q_nope·W_UK per head (the heads batching the
  //     product [H, n·T, dn]·[H, dn, r], which writes into q's first r columns) and q_pe rotated
  //     from its slice of q_b's output.
  // The per-head W_UV product writes o_proj's input [n, T, H·dv] the same way.
  // `stacked`: this layer's stack_inputs() (a snapshot made with the cache), for one product on x.
  Tensor<T> decode(const Tensor<T>& x, const Tables& tables, const typename infer::KVCache<T>::Layer& cache,
                   const infer::DecodeIndex& index, const Tensor<T>& residual = Tensor<T>(),
                   const Tensor<T>& stacked = Tensor<T>()) const {
    check(seq_len(x) == index.tokens, "MLA", "decode takes ",
          index.tokens == 1 ? "one token per row, x [n, 1, hidden]" : "index.tokens tokens per row, x [n, tokens, hidden]",
          " (index.tokens = ", index.tokens, "); got shape ", x.shape());
    check_latent_cache(cache);
    const std::int64_t n = x.size(0), tokens = x.size(1), rows = n * tokens, H = num_heads, r = kv_lora_rank,
                       dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim;
    const auto [q_flat, kv_a] = project_inputs(x, stacked);
    const Tensor<T> q_heads = reshape(q_flat, {n, tokens, H, dn + dr});
    infer::write_normed_latent<T>(cache, index.slots, index.positions, kv_a,
                                  kv_a_layernorm.weight, kv_a_layernorm.eps, tables);
    const Tensor<T> q({n, tokens, H, r + dr}, x.device());
    rope_into(narrow(q, -1, r, dr), narrow(q_heads, -1, dn, dr), tables, RopeLayout::interleaved);
    // view, never reshape: the products write through these views.
    matmul_into(transpose(view(narrow(q, -1, 0, r), {rows, H, r}), 0, 1),
                transpose(view(narrow(q_heads, -1, 0, dn), {rows, H, dn}), 0, 1), w_uk());
    const Tensor<T> o_lat = infer::attend_cached_tokens<T>(q, cache, index.slots, index.lengths, softmax_scale);
    const Tensor<T> o({n, tokens, H * dv}, x.device());
    matmul_into(transpose(view(o, {rows, H, dv}), 0, 1), transpose(view(o_lat, {rows, H, r}), 0, 1),
                transpose(w_uv(), -1, -2));
    return residual.defined() ? o_proj.forward_add(o, residual) : o_proj(o);
  }

  // The weights of the two products on x (q_a, or q without q_lora_rank, then kv_a) stacked
  // [out_q + r + dr, hidden]: a snapshot for decode's one product (made with a decode cache, as the
  // experts' stack; to be made again after the weights change). Undefined where they do not stack
  // alone (biases, FP8 mode): decode then runs the two products.
  Tensor<T> stack_inputs() const {
    const Linear<T>& first = q_proj ? *q_proj : *q_a_proj;
    if (first.bias.defined() || kv_a_proj_with_mqa.bias.defined() || first.fp8 || kv_a_proj_with_mqa.fp8)
      return Tensor<T>();
    NoGradGuard no_grad;
    return cat(std::vector<Tensor<T>>{first.weight.detach(), kv_a_proj_with_mqa.weight.detach()}, 0);
  }

  std::int64_t q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }

  // That `cache` is this layer's latent cache: [c | k_pe] rows of kv_lora_rank + qk_rope_head_dim
  // values in the model's type (k [outer, rows, 1, r + dr], v its first r columns) or in FP8.
  void check_latent_cache(const typename infer::KVCache<T>::Layer& cache) const {
    if (cache.fp8.defined()) {
      check(cache.fp8.latent_dim() == kv_lora_rank && cache.fp8.rope_dim() == qk_rope_head_dim, "MLA",
            "FP8 cache of latent ", cache.fp8.latent_dim(), " + rope ", cache.fp8.rope_dim(),
            " is not the latent cache of this layer (", kv_lora_rank, " + ", qk_rope_head_dim, ")");
      return;
    }
    check(cache.k.defined() && cache.v.defined(), "MLA", "the cache layer holds no latent cache");
    check(cache.k.dim() == 4 && cache.k.size(2) == 1 &&
              cache.k.size(3) == kv_lora_rank + qk_rope_head_dim && cache.v.size(3) == kv_lora_rank,
          "MLA", "cache of shapes ", cache.k.shape(), " and ", cache.v.shape(), " is not the latent cache [slots, ",
          "capacity (or blocks, block tokens), 1, ", kv_lora_rank, " + ", qk_rope_head_dim, "] of this layer");
  }

  std::int64_t num_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank;
  double rope_theta, softmax_scale;

  std::unique_ptr<Linear<T>> q_proj;           // without q_lora_rank
  std::unique_ptr<Linear<T>> q_a_proj;         // with q_lora_rank: hidden -> q_lora_rank
  std::unique_ptr<RMSNorm<T>> q_a_layernorm;
  std::unique_ptr<Linear<T>> q_b_proj;         // q_lora_rank -> H (dn + dr)
  Linear<T> kv_a_proj_with_mqa;                // hidden -> kv_lora_rank + dr
  RMSNorm<T> kv_a_layernorm;
  Linear<T> kv_b_proj;                         // kv_lora_rank -> H (dn + dv)
  Linear<T> o_proj;                            // H dv -> hidden

  // The attention sizes of a config (also checked by DeepseekV3Model before any layer exists).
  static std::int64_t checked_heads(const DeepseekV3Config& c) {
    check(c.num_attention_heads > 0 && c.hidden_size > 0 && c.kv_lora_rank > 0 && c.qk_nope_head_dim > 0 &&
              c.v_head_dim > 0 && (!c.q_lora_rank || *c.q_lora_rank > 0),
          "MLA", "sizes must be positive (heads ", c.num_attention_heads, ", hidden ", c.hidden_size,
          ", kv_lora_rank ", c.kv_lora_rank, ", qk_nope_head_dim ", c.qk_nope_head_dim, ", v_head_dim ",
          c.v_head_dim, ")");
    check(c.qk_rope_head_dim > 0 && c.qk_rope_head_dim % 2 == 0, "MLA",
          "qk_rope_head_dim must be even and positive, got ", c.qk_rope_head_dim);
    return c.num_attention_heads;
  }

 private:
  // The projections both paths share: queries [B, H, S, dn] and rotated [B, H, S, dr], the
  // normalised latent [B, S, r] and the rotated shared key [B, S, dr].
  struct Parts {
    std::int64_t B, S;
    Tensor<T> q_nope, q_pe, c_kv, k_pe;
  };

  std::int64_t seq_len(const Tensor<T>& x) const {
    check_defined("MLA", x);
    check(x.dim() == 3 && x.size(2) == kv_a_proj_with_mqa.in_features, "MLA", "input of shape ", x.shape(),
          " is not [B, S, hidden] with hidden = ", kv_a_proj_with_mqa.in_features);
    return x.size(1);
  }

  Tables tables_for(const Tensor<std::int64_t>& positions, const Tensor<T>& x) const {
    check_positions("MLA", positions, x.size(0), seq_len(x));
    return rope_tables_on<T>(positions, qk_rope_head_dim, rope_theta, x.device());
  }

  // The products on x both paths start from: the queries [B, S, H·(dn + dr)] (through q_a and its
  // norm, then q_b, with q_lora_rank) and kv_a's output [B, S, r + dr]. q_a (or q) and kv_a read
  // the same x: one product where they stack (linears_on_one_input when training; in generation
  // over `stacked`, stack_inputs()'s snapshot, when given).
  std::pair<Tensor<T>, Tensor<T>> project_inputs(const Tensor<T>& x, const Tensor<T>& stacked = Tensor<T>()) const {
    const Linear<T>& first = q_proj ? *q_proj : *q_a_proj;
    std::vector<Tensor<T>> a;
    if (stacked.defined()) {
      check(stacked.shape() == Shape{first.out_features + kv_a_proj_with_mqa.out_features, first.in_features}, "MLA",
            "stacked input weights of shape ", stacked.shape(), " are not this layer's stack_inputs()");
      a = split(linear(x, stacked), std::vector<std::int64_t>{first.out_features, kv_a_proj_with_mqa.out_features}, -1);
    } else {
      a = linears_on_one_input<T>(x, {&first, &kv_a_proj_with_mqa});
    }
    return {q_proj ? a[0] : (*q_b_proj)((*q_a_layernorm)(a[0])), a[1]};
  }

  Parts project(const Tensor<T>& x, const Tables& tables) const {
    const std::int64_t S = seq_len(x), B = x.size(0), H = num_heads;
    const auto [q_flat, kv_a_out] = project_inputs(x);
    const std::vector<Tensor<T>> q = split(reshape(q_flat, {B, S, H, q_head_dim()}),
                                           std::vector<std::int64_t>{qk_nope_head_dim, qk_rope_head_dim}, -1);
    const Tensor<T> q_pe = rope(q[1], tables, RopeLayout::interleaved);  // rope wants [B, S, H, dr]

    const std::vector<Tensor<T>> kv_a = split(kv_a_out, std::vector<std::int64_t>{kv_lora_rank, qk_rope_head_dim}, -1);
    const Tensor<T> k_pe = squeeze(rope(unsqueeze(kv_a[1], 2), tables, RopeLayout::interleaved), 2);
    return {B, S, transpose(q[0], 1, 2), transpose(q_pe, 1, 2), kv_a_layernorm(kv_a[0]), k_pe};
  }

  // kv_b_proj.weight viewed as [H, dn + dv, r] = (W_UK; W_UV): W_UK [H, dn, r], W_UV [H, dv, r].
  Tensor<T> w_uk() const {
    return narrow(reshape(kv_b_proj.weight, {num_heads, qk_nope_head_dim + v_head_dim, kv_lora_rank}), 1, 0,
                  qk_nope_head_dim);
  }
  Tensor<T> w_uv() const {
    return narrow(reshape(kv_b_proj.weight, {num_heads, qk_nope_head_dim + v_head_dim, kv_lora_rank}), 1,
                  qk_nope_head_dim, v_head_dim);
  }

  // What the cache holds per token: [c | k_pe] -> [B, S, 1, r + dr] (the one shared kv head).
  static Tensor<T> latent_row(const Parts& p) {
    return unsqueeze(cat(std::vector<Tensor<T>>{p.c_kv, p.k_pe}, -1), 2);
  }

  // The naive path from the projections: keys and values up-projected per head, causal attention
  // (within each sequence of a packed row when cu_seqlens is given).
  Tensor<T> attend_naive(const Parts& p, const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>(),
                         const Tensor<T>& residual = Tensor<T>()) const {
    const std::int64_t B = p.B, S = p.S, H = num_heads;
    check(!cu_seqlens.defined() || B == 1, "MLA", "packed sequences (cu_seqlens) need one row, B = 1; got B = ", B);
    const std::vector<Tensor<T>> kv =
        split(reshape(kv_b_proj(p.c_kv), {B, S, H, qk_nope_head_dim + v_head_dim}),
              std::vector<std::int64_t>{qk_nope_head_dim, v_head_dim}, -1);
    const Tensor<T> k_nope = transpose(kv[0], 1, 2);  // [B, H, S, dn]
    const Tensor<T> v = transpose(kv[1], 1, 2);       // [B, H, S, dv]
    if (use_fused_attention<T>(v.device(), qk_nope_head_dim + qk_rope_head_dim, v_head_dim)) {
      // Per-head keys [k_nope | k_pe] with the shared rope key broadcast over the heads (a view of
      // head stride 0). The kernels read the parts where they lie (fused_causal_attention_parts:
      // no [B, H, S, dn + dr] copies of q and k) unless KILN_MLA_ATTENTION_PARTS=off.
      const std::int64_t dr = qk_rope_head_dim;
      const Tensor<T> k_pe = expand(reshape(p.k_pe, {B, 1, S, dr}), {B, H, S, dr});
      if (attention_reads_parts()) {
        return output(fused_causal_attention_parts(p.q_nope, p.q_pe, k_nope, k_pe, v, softmax_scale, cu_seqlens),
                      residual);
      }
      const Tensor<T> q = cat(std::vector<Tensor<T>>{p.q_nope, p.q_pe}, -1);
      const Tensor<T> k = cat(std::vector<Tensor<T>>{k_nope, k_pe}, -1);
      return output(fused_causal_attention(q, k, v, softmax_scale, cu_seqlens), residual);
    }
    const Tensor<T> scores =
        add(matmul(p.q_nope, transpose(k_nope, -1, -2)), shared_key_scores(p.q_pe, p.k_pe));
    return output(matmul(causal_softmax(scores, softmax_scale, cu_seqlens), v), residual);
  }

  // Whether the fused attention reads q and k from their parts (default) or from concatenated
  // copies (KILN_MLA_ATTENTION_PARTS=off in the environment, read once a process: comparisons).
  static bool attention_reads_parts() {
    static const bool parts = !environment_is("KILN_MLA_ATTENTION_PARTS", "off");
    return parts;
  }

  // q [B, H, Sq, d] against one key per position shared by all heads, k [B, Sk, d] ->
  // scores [B, H, Sq, Sk]. The heads fold into the rows of one product per batch entry.
  static Tensor<T> shared_key_scores(const Tensor<T>& q, const Tensor<T>& k) {
    const std::int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), d = q.size(3), Sk = k.size(1);
    return reshape(matmul(reshape(q, {B, H * Sq, d}), transpose(k, 1, 2)), {B, H, Sq, Sk});
  }

  // Per-head outputs [B, H, S, dv] -> heads concatenated per token -> o_proj (+ residual, in its
  // product, when given).
  Tensor<T> output(const Tensor<T>& o, const Tensor<T>& residual = Tensor<T>()) const {
    const std::int64_t B = o.size(0), S = o.size(2);
    const Tensor<T> heads = reshape(transpose(o, 1, 2), {B, S, num_heads * v_head_dim});
    return residual.defined() ? o_proj.forward_add(heads, residual) : o_proj(heads);
  }
};

}  // namespace kiln::nn
