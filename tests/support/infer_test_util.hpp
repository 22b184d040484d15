// Shared by the generation tests (tests/infer/): small random Llama and DeepSeek-V3 models, and
// the independent reference of every cached-path check — the model's plain (uncached, training)
// forward over the whole sequence — with the engine's logits rows recorded against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <type_traits>
#include <utility>
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

// The same model with a latent the GPU's FP8 cache kernel takes (kv_lora_rank a multiple of 16,
// qk_rope_head_dim a multiple of 8): 32 latent values in one partial 1×128 scale tile, 8 rope.
inline nn::DeepseekV3Config fp8_cache_deepseek_config() {
  nn::DeepseekV3Config c = infer_deepseek_config();
  c.kv_lora_rank = 32;
  c.qk_rope_head_dim = 8;
  return c;
}

// The same model with 16 routed experts (top-2 in 4 groups, 2 kept): enough experts that
// generation's automatic MoE dispatch is sparse (nn::GenerationDispatch: E >= 8 K).
inline nn::DeepseekV3Config many_experts_deepseek_config() {
  nn::DeepseekV3Config c = infer_deepseek_config();
  c.n_routed_experts = 16;
  c.n_group = 4;
  c.topk_group = 2;
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

// Prompts of the given lengths, random ids in [0, vocab), prompt i drawn with seed first_seed + i.
inline std::vector<std::vector<std::int64_t>> random_prompts(std::int64_t vocab, const std::vector<std::int64_t>& lengths,
                                                             std::uint64_t first_seed) {
  std::vector<std::vector<std::int64_t>> out;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    Generator gen{first_seed + i, 0};
    out.push_back(randint<std::int64_t>(0, vocab, {lengths[i]}, Device::cpu(), gen).to_vector());
  }
  return out;
}

// Each completion's tokens.
inline std::vector<std::vector<std::int64_t>> tokens_of(const std::vector<infer::Completion>& cs) {
  std::vector<std::vector<std::int64_t>> out;
  for (const auto& c : cs) out.push_back(c.tokens);
  return out;
}

// Records every logits row the engine draws from (options.on_logits), by (sample, position of the
// drawn token).
struct LogitsLog {
  std::map<std::pair<std::int64_t, std::int64_t>, std::vector<double>> rows;
  std::int64_t padding_rows = 0;

  std::function<void(const infer::StepLogits&)> hook() {
    return [this](const infer::StepLogits& s) {
      const auto V = static_cast<std::size_t>(s.logits.size(1));
      const std::vector<double> all = s.logits.to_vector();
      for (std::size_t r = 0; r < s.samples.size(); ++r) {
        if (s.samples[r] < 0) {
          ++padding_rows;
          continue;
        }
        EXPECT_TRUE(rows.emplace(std::make_pair(s.samples[r], s.positions[r]), row_of(all, r, V)).second)
            << "sample " << s.samples[r] << " drew twice at position " << s.positions[r];
      }
    };
  }
};

// Every drawn token's logits row equals the uncached forward's row at the position before it, and
// each sample drew exactly its tokens (one row per token). Completion j continues prompt j / G.
template <class Model>
void expect_logits_of_full_forward(Model& m, const std::vector<std::vector<std::int64_t>>& prompts, std::int64_t G,
                                   const std::vector<infer::Completion>& out, const LogitsLog& log, double tolerance) {
  const auto V = static_cast<std::size_t>(m.vocab_size());
  std::vector<double> got, want;
  std::size_t rows = 0;
  for (std::size_t j = 0; j < out.size(); ++j) {
    const auto& prompt = prompts[static_cast<std::size_t>(out[j].prompt)];
    EXPECT_EQ(out[j].prompt, static_cast<std::int64_t>(j) / G);
    std::vector<std::int64_t> seq = prompt;
    seq.insert(seq.end(), out[j].tokens.begin(), out[j].tokens.end());
    const std::vector<double> full = full_logits(m, seq);
    for (std::size_t t = 0; t < out[j].tokens.size(); ++t) {
      const auto position = static_cast<std::int64_t>(prompt.size() + t);
      const auto it = log.rows.find({static_cast<std::int64_t>(j), position});
      if (it == log.rows.end()) {
        ADD_FAILURE() << "no logits recorded for sample " << j << " at position " << position;
        continue;
      }
      got.insert(got.end(), it->second.begin(), it->second.end());
      const auto row = row_of(full, static_cast<std::size_t>(position - 1), V);
      want.insert(want.end(), row.begin(), row.end());
      ++rows;
    }
  }
  EXPECT_EQ(rows, log.rows.size());
  EXPECT_LT(relative_error(got, want), tolerance);
}

// Per drawn token, the relative error of its logits row (from `log`) against the uncached
// forward's row at the position before it: errors[j][t] for token t of completion j (prompt
// out[j].prompt). A missing row fails the test and is left out.
template <class Model>
std::vector<std::vector<double>> row_errors_against_full_forward(Model& m,
                                                                 const std::vector<std::vector<std::int64_t>>& prompts,
                                                                 const std::vector<infer::Completion>& out,
                                                                 const LogitsLog& log) {
  const auto V = static_cast<std::size_t>(m.vocab_size());
  std::vector<std::vector<double>> errors(out.size());
  for (std::size_t j = 0; j < out.size(); ++j) {
    std::vector<std::int64_t> seq = prompts[static_cast<std::size_t>(out[j].prompt)];
    const std::size_t L = seq.size();
    seq.insert(seq.end(), out[j].tokens.begin(), out[j].tokens.end());
    const std::vector<double> full = full_logits(m, seq);
    for (std::size_t t = 0; t < out[j].tokens.size(); ++t) {
      const auto it = log.rows.find({static_cast<std::int64_t>(j), static_cast<std::int64_t>(L + t)});
      if (it == log.rows.end()) {
        ADD_FAILURE() << "no logits recorded for sample " << j << " at position " << L + t;
        continue;
      }
      errors[j].push_back(relative_error(it->second, row_of(full, L + t - 1, V)));
    }
  }
  return errors;
}

// The median of the errors of every sample's tokens after its first (which the prefill draws).
inline double median_after_first_token(const std::vector<std::vector<double>>& errors) {
  std::vector<double> later;
  for (const auto& e : errors) later.insert(later.end(), e.begin() + std::min<std::ptrdiff_t>(1, std::ssize(e)), e.end());
  EXPECT_FALSE(later.empty());
  if (later.empty()) return INFINITY;
  std::nth_element(later.begin(), later.begin() + static_cast<std::ptrdiff_t>(later.size() / 2), later.end());
  return later[later.size() / 2];
}

}  // namespace kiln::testing
