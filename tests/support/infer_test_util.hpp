// Shared by the generation tests (tests/infer/): small random Llama and DeepSeek-V3 models, and
// the independent reference of every cached-path check — the model's plain (uncached, training)
// forward over the whole sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include <kiln/infer/engine.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/llama.hpp>

#include "nn_test_util.hpp"

namespace kiln::testing {

// Two layers, grouped-query attention (4 query heads on 2 kv heads), a head_dim that is not
// hidden / heads.
inline nn::LlamaConfig infer_llama_config() {
  nn::LlamaConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;
  c.rope_theta = 100.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

// Three layers: one dense, two MoE (4 routed experts in 2 groups, 1 kept, top-2, a shared expert),
// MLA with q_lora_rank; one MTP module (which generation does not use).
inline nn::DeepseekV3Config infer_deepseek_config() {
  nn::DeepseekV3Config c = tiny_deepseek_config(0.2);
  c.vocab_size = 40;
  c.num_hidden_layers = 3;
  c.rope_theta = 100.0;
  c.max_position_embeddings = 64;
  return c;
}

// A model of the config with every parameter (and buffer) drawn from normal(0, scale), the same
// numbers for every T.
template <class T>
std::unique_ptr<nn::LlamaForCausalLM<T>> make_llama(std::uint64_t seed, const nn::LlamaConfig& c = infer_llama_config(),
                                                    double scale = 0.4) {
  Generator gen{seed, 0};
  auto m = std::make_unique<nn::LlamaForCausalLM<double>>(c, gen);
  randomize(*m, seed + 1, scale);
  if constexpr (std::is_same_v<T, double>) {
    return m;
  } else {
    Generator gen2{seed, 0};
    auto mt = std::make_unique<nn::LlamaForCausalLM<T>>(c, gen2);
    copy_params<T>(*mt, *m);
    return mt;
  }
}

template <class T>
std::unique_ptr<nn::DeepseekV3ForCausalLM<T>> make_deepseek(std::uint64_t seed,
                                                            const nn::DeepseekV3Config& c = infer_deepseek_config(),
                                                            double scale = 0.4) {
  Generator gen{seed, 0};
  auto m = std::make_unique<nn::DeepseekV3ForCausalLM<double>>(c, gen);
  randomize(*m, seed + 1, scale);
  if constexpr (std::is_same_v<T, double>) {
    return m;
  } else {
    Generator gen2{seed, 0};
    auto mt = std::make_unique<nn::DeepseekV3ForCausalLM<T>>(c, gen2);
    copy_params<T>(*mt, *m);
    return mt;
  }
}

// The uncached forward of one sequence: logits [S, vocab] row-major, as doubles. (Non-const
// model: DeepSeek-V3's training forward counts expert load.)
template <class Model>
std::vector<double> full_logits(Model& m, const std::vector<std::int64_t>& seq) {
  NoGradGuard no_grad;
  const auto logits = m.forward(Tensor<std::int64_t>::from_vector(seq, {1, static_cast<std::int64_t>(seq.size())}));
  return cast<double>(logits).to_vector();
}

// Row i of a row-major [rows, V] vector.
inline std::vector<double> row_of(const std::vector<double>& m, std::size_t i, std::size_t V) {
  return std::vector<double>(m.begin() + static_cast<std::ptrdiff_t>(i * V),
                             m.begin() + static_cast<std::ptrdiff_t>((i + 1) * V));
}

// The lowest index of the largest entry.
inline std::int64_t argmax_of(const std::vector<double>& v) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return static_cast<std::int64_t>(best);
}

}  // namespace kiln::testing
