// Model configurations with the field names of Hugging Face's config.json for
// DeepseekV3ForCausalLM and LlamaForCausalLM (io/config.hpp reads and writes them). The defaults
// describe small models that train on a CPU in minutes; the published models set every field.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kiln::nn {

struct DeepseekV3Config {
  std::int64_t vocab_size = 512;
  std::int64_t hidden_size = 128;
  std::int64_t intermediate_size = 384;      // dense MLP layers (the first first_k_dense_replace)
  std::int64_t moe_intermediate_size = 64;   // each routed / shared expert
  std::int64_t num_hidden_layers = 2;
  std::int64_t num_nextn_predict_layers = 1;  // MTP depth D
  std::int64_t num_attention_heads = 4;
  std::int64_t num_key_value_heads = 4;       // MLA: equal to num_attention_heads
  std::int64_t n_shared_experts = 1;
  std::int64_t n_routed_experts = 8;
  double routed_scaling_factor = 2.5;
  std::int64_t kv_lora_rank = 32;
  std::optional<std::int64_t> q_lora_rank = 48;  // absent: a plain q_proj
  std::int64_t qk_rope_head_dim = 16;
  std::int64_t qk_nope_head_dim = 32;
  std::int64_t v_head_dim = 32;
  std::string topk_method = "noaux_tc";
  std::int64_t n_group = 2;
  std::int64_t topk_group = 1;
  std::int64_t num_experts_per_tok = 2;
  std::int64_t moe_layer_freq = 1;
  std::int64_t first_k_dense_replace = 1;
  bool norm_topk_prob = true;
  std::string scoring_func = "sigmoid";
  std::string hidden_act = "silu";
  std::int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::int64_t bos_token_id = 0;
  std::int64_t eos_token_id = 1;
  std::optional<std::int64_t> pad_token_id;

  // kiln training options (not part of the Hugging Face config; saved under "kiln" keys).
  double aux_loss_free_gamma = 0.001;  // bias update speed γ; 0 disables aux-loss-free balancing
  double seq_aux_loss_alpha = 0.0;     // sequence-wise balance loss weight α (0: off)
  double mtp_loss_weight = 0.3;        // λ for the MTP loss
};

struct LlamaConfig {
  std::int64_t vocab_size = 512;
  std::int64_t hidden_size = 128;
  std::int64_t intermediate_size = 384;
  std::int64_t num_hidden_layers = 2;
  std::int64_t num_attention_heads = 4;
  std::int64_t num_key_value_heads = 2;  // grouped-query attention
  std::optional<std::int64_t> head_dim;  // default hidden_size / num_attention_heads
  std::string hidden_act = "silu";
  std::int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::int64_t bos_token_id = 0;
  std::int64_t eos_token_id = 1;
  std::optional<std::int64_t> pad_token_id;

  std::int64_t resolved_head_dim() const { return head_dim ? *head_dim : hidden_size / num_attention_heads; }
};

}  // namespace kiln::nn
