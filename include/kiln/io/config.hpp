// Hugging Face config.json <-> nn::DeepseekV3Config / nn::LlamaConfig.
//
// Field names are exactly those of transformers' DeepseekV3Config and LlamaConfig, with
// "architectures" ["DeepseekV3ForCausalLM"] / ["LlamaForCausalLM"] and "model_type"
// "deepseek_v3" / "llama", so a kiln model directory opens with AutoModelForCausalLM and a
// Hugging Face config builds a kiln model. Reading:
//   - fields kiln does not use are ignored; fields that are absent keep the struct's defaults;
//   - a field of the wrong JSON type, or a negative size, is an error naming the file and field;
//   - null sets an optional field (q_lora_rank, head_dim, pad_token_id) to absent;
//   - a *_token_id given as a list (Llama 3 lists several eos ids) takes the first;
//   - a non-null "rope_scaling" is an error: kiln implements plain RoPE, and ignoring the
//     scaling would build a different model without saying so;
//   - "rope_parameters" (transformers 5 writes rope_theta only there: {"rope_type": "default",
//     "rope_theta": ...}) gives rope_theta, taking precedence over a top-level "rope_theta" as in
//     transformers; a rope_type other than "default" is an error, as rope_scaling is;
//   - DeepSeek-V3 "rope_interleave": false is an error: kiln's MLA rotates interleaved pairs,
//     the layout of the published checkpoints and transformers' default (true);
//   - a "model_type" of another model is an error.
// kiln's own training options are written under keys prefixed "kiln_", which transformers keeps
// as unknown attributes and otherwise ignores.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/io/file.hpp"
#include "kiln/io/json.hpp"
#include "kiln/nn/config.hpp"

namespace kiln::io {

// The names that identify each config in config.json.
template <class Config>
struct config_traits;

template <>
struct config_traits<nn::DeepseekV3Config> {
  static constexpr const char* model_type = "deepseek_v3";
  static constexpr const char* architecture = "DeepseekV3ForCausalLM";
  // Calls f(json key, field) for every field, in the order config.json lists them. C is the
  // config, const or not, so one table serves reading and writing.
  template <class C, class F>
  static void fields(C& c, F&& f) {
    f("vocab_size", c.vocab_size);
    f("hidden_size", c.hidden_size);
    f("intermediate_size", c.intermediate_size);
    f("moe_intermediate_size", c.moe_intermediate_size);
    f("num_hidden_layers", c.num_hidden_layers);
    f("num_nextn_predict_layers", c.num_nextn_predict_layers);
    f("num_attention_heads", c.num_attention_heads);
    f("num_key_value_heads", c.num_key_value_heads);
    f("n_shared_experts", c.n_shared_experts);
    f("n_routed_experts", c.n_routed_experts);
    f("routed_scaling_factor", c.routed_scaling_factor);
    f("kv_lora_rank", c.kv_lora_rank);
    f("q_lora_rank", c.q_lora_rank);
    f("qk_rope_head_dim", c.qk_rope_head_dim);
    f("qk_nope_head_dim", c.qk_nope_head_dim);
    f("v_head_dim", c.v_head_dim);
    f("topk_method", c.topk_method);
    f("n_group", c.n_group);
    f("topk_group", c.topk_group);
    f("num_experts_per_tok", c.num_experts_per_tok);
    f("moe_layer_freq", c.moe_layer_freq);
    f("first_k_dense_replace", c.first_k_dense_replace);
    f("norm_topk_prob", c.norm_topk_prob);
    f("scoring_func", c.scoring_func);
    f("hidden_act", c.hidden_act);
    f("max_position_embeddings", c.max_position_embeddings);
    f("initializer_range", c.initializer_range);
    f("rms_norm_eps", c.rms_norm_eps);
    f("rope_theta", c.rope_theta);
    f("tie_word_embeddings", c.tie_word_embeddings);
    f("attention_bias", c.attention_bias);
    f("bos_token_id", c.bos_token_id);
    f("eos_token_id", c.eos_token_id);
    f("pad_token_id", c.pad_token_id);
    f("kiln_aux_loss_free_gamma", c.aux_loss_free_gamma);
    f("kiln_seq_aux_loss_alpha", c.seq_aux_loss_alpha);
    f("kiln_mtp_loss_weight", c.mtp_loss_weight);
  }
};

template <>
struct config_traits<nn::LlamaConfig> {
  static constexpr const char* model_type = "llama";
  static constexpr const char* architecture = "LlamaForCausalLM";
  template <class C, class F>
  static void fields(C& c, F&& f) {
    f("vocab_size", c.vocab_size);
    f("hidden_size", c.hidden_size);
    f("intermediate_size", c.intermediate_size);
    f("num_hidden_layers", c.num_hidden_layers);
    f("num_attention_heads", c.num_attention_heads);
    f("num_key_value_heads", c.num_key_value_heads);
    f("head_dim", c.head_dim);
    f("hidden_act", c.hidden_act);
    f("max_position_embeddings", c.max_position_embeddings);
    f("initializer_range", c.initializer_range);
    f("rms_norm_eps", c.rms_norm_eps);
    f("rope_theta", c.rope_theta);
    f("tie_word_embeddings", c.tie_word_embeddings);
    f("attention_bias", c.attention_bias);
    f("mlp_bias", c.mlp_bias);
    f("bos_token_id", c.bos_token_id);
    f("eos_token_id", c.eos_token_id);
    f("pad_token_id", c.pad_token_id);
  }
};

namespace detail {

inline bool is_token_id(const std::string& key) {
  return key.size() > 9 && key.compare(key.size() - 9, 9, "_token_id") == 0;
}

template <class Json>
std::int64_t config_int(const Json& v, const std::string& key, const std::string& source) {
  if (is_token_id(key) && v.is_array() && !v.empty()) return config_int(v[0], key, source);
  if (!v.is_number_integer())
    fail("config", source, ": field '", key, "' must be an integer, got ", describe_json(v), " (", v.type_name(), ")");
  if (v.is_number_unsigned() && v.template get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("config", source, ": field '", key, "' value ", describe_json(v), " does not fit in int64");
  const auto x = v.template get<std::int64_t>();
  if (x < 0 && !is_token_id(key)) fail("config", source, ": field '", key, "' must not be negative, got ", x);
  return x;
}

template <class Json, class Field>
void read_config_field(const Json& j, const std::string& key, Field& field, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) return;
  const Json& v = *it;
  if constexpr (std::is_same_v<Field, std::int64_t>) {
    field = config_int(v, key, source);
  } else if constexpr (std::is_same_v<Field, std::optional<std::int64_t>>) {
    field = v.is_null() ? std::nullopt : std::optional<std::int64_t>(config_int(v, key, source));
  } else if constexpr (std::is_same_v<Field, double>) {
    if (!v.is_number()) fail("config", source, ": field '", key, "' must be a number, got ", describe_json(v), " (", v.type_name(), ")");
    field = v.template get<double>();
  } else if constexpr (std::is_same_v<Field, bool>) {
    if (!v.is_boolean()) fail("config", source, ": field '", key, "' must be true or false, got ", describe_json(v), " (", v.type_name(), ")");
    field = v.template get<bool>();
  } else if constexpr (std::is_same_v<Field, std::string>) {
    if (!v.is_string()) fail("config", source, ": field '", key, "' must be a string, got ", describe_json(v), " (", v.type_name(), ")");
    field = v.template get<std::string>();
  } else {
    static_assert(sizeof(Field) == 0, "config field of an unsupported type");
  }
}

}  // namespace detail

// The config as config.json holds it (architectures and model_type first). torch_dtype, when
// given ("float32", "bfloat16", ...), tells transformers the dtype of the weights.
template <class Config>
ordered_json config_to_json(const Config& config, const std::string& torch_dtype = "") {
  using traits = config_traits<Config>;
  ordered_json j;
  j["architectures"] = {traits::architecture};
  j["model_type"] = traits::model_type;
  traits::fields(config, [&](const char* key, const auto& field) {
    using Field = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<Field, std::optional<std::int64_t>>) {
      j[key] = field ? ordered_json(*field) : ordered_json(nullptr);
    } else {
      j[key] = field;
    }
  });
  if (!torch_dtype.empty()) j["torch_dtype"] = torch_dtype;
  return j;
}

// Reads a config from parsed config.json (json or ordered_json); `source` names it in errors.
template <class Config, class Json>
Config config_from_json(const Json& j, const std::string& source = "config.json") {
  using traits = config_traits<Config>;
  if (!j.is_object()) fail("config", source, ": expected a JSON object, got ", j.type_name());
  if (auto it = j.find("model_type"); it != j.end()) {
    if (!it->is_string() || it->template get<std::string>() != traits::model_type)
      fail("config", source, ": model_type is ", describe_json(*it), ", expected \"", traits::model_type, "\"");
  } else if (auto arch = j.find("architectures"); arch != j.end() && arch->is_array()) {
    bool found = false;
    std::string listed;  // the first few, for the message
    for (std::size_t i = 0; i < arch->size(); ++i) {
      const auto& a = (*arch)[i];
      found = found || (a.is_string() && a.template get<std::string>() == traits::architecture);
      if (i < 4) listed += (i ? ", " : "") + describe_json(a);
    }
    if (arch->size() > 4) listed += ", ...";
    if (!found) fail("config", source, ": architectures [", listed, "] do not include \"", traits::architecture, "\"");
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null())
    fail("config", source, ": rope_scaling ", describe_json(*it), " is not supported (kiln implements plain RoPE)");
  Config config;
  traits::fields(config, [&](const char* key, auto& field) { detail::read_config_field(j, key, field, source); });
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail("config", source, ": rope_parameters must be an object, got ", describe_json(*it));
    for (const char* type_key : {"rope_type", "type"})
      if (auto t = it->find(type_key); t != it->end() && !(t->is_string() && t->template get<std::string>() == "default"))
        fail("config", source, ": rope_parameters ", describe_json(*it),
             " is not supported (kiln implements plain RoPE: rope_type \"default\")");
    detail::read_config_field(*it, "rope_theta", config.rope_theta, source);
  }
  if constexpr (std::is_same_v<Config, nn::DeepseekV3Config>) {
    if (auto it = j.find("rope_interleave"); it != j.end() && !(it->is_boolean() && it->template get<bool>()))
      fail("config", source, ": rope_interleave ", describe_json(*it),
           " is not supported (kiln's MLA implements the interleaved rope layout, rope_interleave true)");
  }
  return config;
}

template <class Config>
Config load_config(const std::string& path) {
  return config_from_json<Config>(parse_json(read_text_file(path, "config"), "config", path), path);
}

// Writes config.json atomically (indented, like transformers' save_pretrained).
template <class Config>
void save_config(const std::string& path, const Config& config, const std::string& torch_dtype = "") {
  write_file_atomically(path, dump_json(config_to_json(config, torch_dtype), "config", path, 2) + "\n", "config");
}

// The fields in which two configs differ, each as "key (<a_name> value, <b_name> value)" with the
// values as config.json writes them; empty when they are the same model. Used on resume, where
// any difference (another rope_theta, eps or head split) would train a different model silently.
template <class Config>
std::vector<std::string> config_differences(const Config& a, const Config& b, const char* a_name, const char* b_name) {
  const ordered_json ja = config_to_json(a), jb = config_to_json(b);
  std::vector<std::string> out;
  for (const auto& [key, value] : ja.items())
    if (value != jb.at(key))
      out.push_back(str(key, " (", a_name, " ", describe_json(value), ", ", b_name, " ", describe_json(jb.at(key)), ")"));
  return out;
}

// The "model_type" of a config.json ("deepseek_v3", "llama", ...): which config to load it as.
inline std::string config_model_type(const std::string& path) {
  const json j = parse_json(read_text_file(path, "config"), "config", path);
  if (!j.is_object() || !j.contains("model_type") || !j["model_type"].is_string())
    fail("config", path, ": has no \"model_type\" string");
  return j["model_type"].get<std::string>();
}

}  // namespace kiln::io
