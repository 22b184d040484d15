// Multi-token prediction (MTP), DeepSeek-V3 report §2.2: D sequential modules; module k (1-based)
// predicts, at position i, the token k + 1 steps ahead, from the previous depth's representation
// of position i and the embedding of the token k steps ahead:
//   h'_i^k = eh_proj([enorm(Emb(t_{i+k})); hnorm(h_i^{k-1})])       (concat 2·hidden -> hidden)
//   h^k    = TRM_k(h'^k)            one transformer block, causal over positions 0..T-k-1
//   P^k    = OutHead(shared_head.norm(h^k))    predicts t_{i+k+1}
//   L_MTP  = λ/D · Σ_k CE(P^k, t_{k+1+i})      each CE a mean over the T-k positions
// h^0 is the main model's last hidden state before its final norm: in the report's figure the
// main model's output head is "norm + linear", and module k has its own norm (shared_head.norm)
// before the shared linear. (vLLM and SGLang feed the main model's post-norm states when they use
// these modules for speculative decoding.) The embedding and the output linear are the main
// model's: they are not parameters of the module.
//
// Names follow the Hugging Face DeepSeek-V3 checkpoints (and vLLM's loader): module k is
// model.layers.{num_hidden_layers + k - 1} with the transformer block's own names at that level
// (self_attn.*, mlp.*, input_layernorm, post_attention_layernorm) plus enorm.weight,
// hnorm.weight, eh_proj.weight [hidden, 2·hidden] and shared_head.norm.weight. The concat puts
// the embedding first, as the checkpoints' eh_proj expects (the report writes the hidden state
// first). The checkpoints also carry copies of the shared tensors, model.layers.{..}.embed_tokens
// .weight and shared_head.head.weight; kiln does not list them (listing a shared tensor twice
// would make the optimizer update it twice): see mtp_shared_weight_names.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/nn/attention.hpp"
#include "kiln/nn/config.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/cross_entropy.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::nn {

// The module's output norm; the head linear itself is the main model's lm_head.
template <class T>
class MTPSharedHead : public Module<T> {
 public:
  MTPSharedHead(std::int64_t hidden, double eps) : norm(hidden, eps) { this->register_module("norm", &norm); }
  RMSNorm<T> norm;
};

// One MTP module around a transformer block type Block (constructed as Block(config, layer_idx,
// gen, block_args...), with forward_full(x [B, S, hidden], positions [S]) returning .hidden and .balance_loss).
// It derives from the block so that the block's parameters keep their names at the module's level.
template <class T, class Block>
class MultiTokenPredictionLayer : public Block {
 public:
  template <class... BlockArgs>
  MultiTokenPredictionLayer(const DeepseekV3Config& c, std::int64_t layer_idx, Generator& gen, BlockArgs&&... block_args)
      : Block(c, layer_idx, gen, std::forward<BlockArgs>(block_args)...),
        enorm(c.hidden_size, c.rms_norm_eps),
        hnorm(c.hidden_size, c.rms_norm_eps),
        eh_proj(2 * c.hidden_size, c.hidden_size, false, c.initializer_range, gen),
        shared_head(c.hidden_size, c.rms_norm_eps) {
    this->register_module("enorm", &enorm);
    this->register_module("hnorm", &hnorm);
    this->register_module("eh_proj", &eh_proj);
    this->register_module("shared_head", &shared_head);
  }

  // previous [B, S, hidden]: h^{k-1} at positions 0..S-1; embedded [B, S, hidden]: the
  // embeddings of the tokens k steps ahead of those positions. Returns the block's output: h^k
  // (.hidden, before shared_head.norm) and its balance loss.
  auto forward_mtp(const Tensor<T>& previous, const Tensor<T>& embedded) {
    check_defined("MultiTokenPredictionLayer", previous, embedded);
    check(previous.dim() == 3 && previous.shape() == embedded.shape(), "MultiTokenPredictionLayer",
          "needs hidden states and embeddings of one shape [B, S, hidden], got ", previous.shape(), " and ",
          embedded.shape());
    return this->forward_full(merge(previous, embedded), positions_from(0, previous.size(1)));
  }

  // The block's input h'^k = eh_proj([enorm(embedded); hnorm(previous)]), [..., hidden] each: what
  // training (forward_mtp) and drafting (DeepseekV3ForCausalLM::mtp_decode, which runs the block
  // over its own cache layer) both feed the block.
  Tensor<T> merge(const Tensor<T>& previous, const Tensor<T>& embedded) const {
    return eh_proj(cat(std::vector<Tensor<T>>{enorm(embedded), hnorm(previous)}, -1));
  }

  RMSNorm<T> enorm, hnorm;
  Linear<T> eh_proj;  // [hidden, 2·hidden]
  MTPSharedHead<T> shared_head;
};

template <class T>
struct MTPLoss {
  Tensor<T> loss;                  // λ/D Σ_k CE_k (a scalar; 0 without modules)
  std::vector<Tensor<T>> depths;   // CE_k for k = 1..D (undefined for depths the sequence is too short for)
  std::vector<Tensor<T>> balance;  // each module's balance loss (undefined where there is none)
};

// The MTP loss of `layers` (depth k = index + 1) for ids [B, S] with next-token targets [B, S]
// (targets[:, i] = the token after ids[:, i]; ignore_index marks positions without one).
//   h0: the main model's last hidden state [B, S, hidden] (before its final norm);
//   embed: ids -> embeddings (the main model's embed_tokens); head: hidden -> logits (lm_head).
// Depth k reads h^{k-1}[:, :S-k], the embeddings of ids[:, k:], and is scored against
// targets[:, k:] (the token k + 1 steps after each position). Depths with S <= k are skipped.
template <class T, class Layer>
MTPLoss<T> multi_token_prediction_loss(const std::vector<std::unique_ptr<Layer>>& layers, const Tensor<T>& h0,
                                       const Tensor<std::int64_t>& ids, const Tensor<std::int64_t>& targets,
                                       const std::function<Tensor<T>(const Tensor<std::int64_t>&)>& embed,
                                       const std::function<Tensor<T>(const Tensor<T>&)>& head, double weight,
                                       std::int64_t ignore_index = -100) {
  const char* op = "multi_token_prediction_loss";
  check_defined(op, h0, ids, targets);
  check(ids.dim() == 2 && targets.shape() == ids.shape() && h0.dim() == 3 && h0.size(0) == ids.size(0) &&
            h0.size(1) == ids.size(1),
        op, "needs ids and targets [B, S] and hidden states [B, S, hidden], got shapes ", ids.shape(), ", ",
        targets.shape(), " and ", h0.shape());
  const std::int64_t S = ids.size(1);
  const auto D = static_cast<std::int64_t>(layers.size());
  MTPLoss<T> out;
  out.loss = zeros<T>({}, h0.device());
  Tensor<T> h = h0;
  for (std::int64_t k = 1; k <= D; ++k) {
    if (S <= k) {
      out.depths.emplace_back();
      out.balance.emplace_back();
      continue;
    }
    const std::int64_t n = S - k;
    auto block = layers[static_cast<std::size_t>(k - 1)]->forward_mtp(narrow(h, 1, 0, n), embed(narrow(ids, 1, k, n)));
    h = block.hidden;
    const Tensor<T> logits = head(layers[static_cast<std::size_t>(k - 1)]->shared_head.norm(h));
    const Tensor<T> ce = cross_entropy(logits, contiguous(narrow(targets, 1, k, n)), ignore_index);
    out.depths.push_back(ce);
    out.balance.push_back(block.balance_loss);
    out.loss = add(out.loss, ce);
  }
  if (D > 0) out.loss = mul(out.loss, weight / static_cast<double>(D));
  return out;
}

// The names under which Hugging Face DeepSeek-V3 checkpoints store copies of the tensors the MTP
// modules share with the main model: {checkpoint name, kiln name}, for
// model.layers.{L + k}.embed_tokens.weight and model.layers.{L + k}.shared_head.head.weight.
inline std::vector<std::pair<std::string, std::string>> mtp_shared_weight_names(const DeepseekV3Config& c) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  for (std::int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers + k) + ".";
    out.emplace_back(p + "embed_tokens.weight", "model.embed_tokens.weight");
    out.emplace_back(p + "shared_head.head.weight", head);
  }
  return out;
}

}  // namespace kiln::nn
