// FP8 training of a model's linear layers, after DeepSeek-V3's mixed-precision framework (technical
// report §3.3): the GEMMs of the linear layers run in FP8 e4m3 with fine-grained scales
// (activations and their gradients in 1×128 tiles, weights in 128×128 blocks; nn/fp8_linear.hpp),
// while the report keeps in their original precision "the embedding module, the output head, MoE
// gating modules, normalization operators, and attention operators", and the master weights,
// weight gradients' accumulation and optimizer states in FP32 (kiln's Trainer keeps FP32 masters
// for a bf16 model).
//
// use_fp8_linears switches every nn::Linear of a model to FP8 mode except the ones `keep` names
// (by default the output head, lm_head). The embedding, norms, MoE gates (nn::MoEGate) and the
// attention core are not nn::Linear modules, so they keep their precision by construction. What
// switches in a DeepSeek-V3 model: the MLA projections (q_a/q_b or q, kv_a, kv_b, o), the dense
// MLPs, the shared experts, the MTP modules' eh_proj, and the routed experts' linears: on MoE's
// composed path each expert's linear runs fp8_linear; on the fused path the grouped products run
// grouped_fp8_linear (forward and data gradient in FP8 through the grouped FP8 GEMM; the weight
// gradient stays in the model's dtype unless Fp8LinearOptions::grouped_fp8_wgrad asks for the
// k-grouped FP8 GEMM, see nn/fp8_linear.hpp). Generation's decode step (dense
// dispatch over a snapshot of the expert weights) does not use FP8.
//
// The mode changes what a forward computes, not the parameters: a checkpoint saved from an FP8 run
// loads into a bf16 model and back.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "kiln/nn/fp8_linear.hpp"
#include "kiln/nn/linear.hpp"
#include "kiln/nn/module.hpp"

namespace kiln::nn {

// The default `keep`: the output head stays in the model's precision (DeepSeek-V3 §3.3).
inline bool is_output_head(const std::string& name) {
  const std::string_view n(name);
  return n == "lm_head" || (n.size() > 8 && n.substr(n.size() - 8) == ".lm_head");
}

// Switches every nn::Linear<T> under `model` whose name `keep` does not claim to FP8 mode with
// `options`; returns the names switched, in module order. T must be float or bf16.
template <class T>
std::vector<std::string> use_fp8_linears(Module<T>& model, const Fp8LinearOptions& options = {},
                                         const std::function<bool(const std::string&)>& keep = is_output_head) {
  check(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "use_fp8_linears",
        "FP8 linears need a float or bf16 model, got ", dtype_of<T>);
  std::vector<std::string> switched;
  model.visit_modules("", [&](const std::string& name, Module<T>& m) {
    auto* lin = dynamic_cast<Linear<T>*>(&m);
    if (lin == nullptr || (keep && keep(name))) return;
    lin->fp8 = options;
    switched.push_back(name);
  });
  return switched;
}

// Turns FP8 mode off in every nn::Linear<T> under `model` (e.g. to evaluate FP8-trained weights
// with the model's own precision); returns how many were in FP8 mode.
template <class T>
std::int64_t clear_fp8_linears(Module<T>& model) {
  std::int64_t cleared = 0;
  model.visit_modules("", [&](const std::string&, Module<T>& m) {
    auto* lin = dynamic_cast<Linear<T>*>(&m);
    if (lin == nullptr || !lin->fp8) return;
    lin->fp8.reset();
    ++cleared;
  });
  return cleared;
}

}  // namespace kiln::nn
