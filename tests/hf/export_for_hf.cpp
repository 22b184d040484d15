// hf_export: the kiln half of the Hugging Face logits check (tests/hf/compare_logits.py is the
// other half). For each model type it builds a small random fp32 model, writes it as a Hugging
// Face model directory with kiln's own checkpoint writer (io::save_model), runs random token ids
// through it with kiln and stores ids and logits:
//
//   OUT/llama/{config.json, model.safetensors}         LlamaForCausalLM
//   OUT/llama.kiln.safetensors                         input_ids [B, S] int64, logits [B, S, V] fp32
//   OUT/deepseek_v3/{config.json, model.safetensors}   DeepseekV3ForCausalLM
//   OUT/deepseek_v3.kiln.safetensors
//
// Usage: hf_export --out DIR [--device cpu|cuda] [--seed N]
// Exit status 0, or 77 (skip) for --device cuda where no CUDA device is present.
//
// The configs exercise what a faithful port has to get right: GQA with an explicit head_dim and
// attention biases, rope_theta and rms_norm_eps away from their defaults (Llama); q_lora_rank,
// v_head_dim != qk_nope_head_dim, a dense first layer then MoE layers, group-limited routing,
// shared experts, norm_topk_prob, routed_scaling_factor != 1 and a non-zero routing bias
// (DeepSeek-V3). Every tensor is random — norm weights around 1, biases included — with a larger
// spread than the training init, so that attention is far from uniform and routing is decided
// by clear score differences rather than by rounding. The DeepSeek-V3 directory also holds one
// MTP module (model.layers.{num_hidden_layers}), as kiln's checkpoints do; Hugging Face has no
// MTP modules and reports those tensors as unexpected, which compare_logits.py allows for
// exactly those names.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <kiln/io/checkpoint.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/kiln.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/llama.hpp>

#ifdef KILN_HF_EXPORT_CUDA
#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/kernels/matmul/cublaslt.hpp>
#endif

namespace {

using namespace kiln;

constexpr std::int64_t kBatch = 2;
constexpr std::int64_t kSeq = 13;
constexpr double kWeightStd = 0.1;  // every weight matrix and embedding

nn::LlamaConfig llama_config() {
  nn::LlamaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 112;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA: two query heads per kv head
  c.head_dim = 24;            // not hidden_size / num_attention_heads
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.initializer_range = kWeightStd;
  return c;
}

nn::DeepseekV3Config deepseek_config() {
  nn::DeepseekV3Config c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.moe_intermediate_size = 32;
  c.num_hidden_layers = 3;  // layer 0 dense, layers 1 and 2 MoE
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 1;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.q_lora_rank = 40;
  c.kv_lora_rank = 24;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 12;
  c.n_routed_experts = 8;
  c.n_group = 4;
  c.topk_group = 2;
  c.num_experts_per_tok = 3;
  c.n_shared_experts = 2;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rope_theta = 20000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  c.initializer_range = kWeightStd;
  return c;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Replaces the deterministic init of what the constructors set to constants: norm weights become
// 1 + N(0, 0.2²) (a norm applied in the wrong place, or with the wrong weight, then shows), linear
// biases N(0, 0.1²), and the routing bias is drawn from U[0, 0.2).
//
// The routing bias is non-negative on purpose: the affinities s are sigmoids, so every biased
// choice score s + b stays > 0. Older Hugging Face versions masked the experts of dropped groups
// with 0 where kiln uses −∞ — the same choice only while every kept score is positive. Its spread
// (up to 0.2 against affinities spread over about (0.1, 0.9)) is large enough to change which
// experts are chosen; check_routing_bias_matters() checks that it does.
template <class Model>
void randomise_constants(Model& model, Generator& gen) {
  NoGradGuard no_grad;
  model.visit("", [&](const std::string& name, Tensor<float>* t, bool trainable) {
    Tensor<float> fresh;
    if (ends_with(name, "e_score_correction_bias")) fresh = rand<float>(t->shape(), 0.0, 0.2, Device::cpu(), gen);
    else if (ends_with(name, "norm.weight")) fresh = randn<float>(t->shape(), 1.0, 0.2, Device::cpu(), gen);
    else if (ends_with(name, ".bias")) fresh = randn<float>(t->shape(), 0.0, 0.1, Device::cpu(), gen);
    else return;
    if (trainable) fresh.requires_grad_();
    *t = fresh;
  });
}

double relative_difference(const Tensor<float>& a, const Tensor<float>& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    num += d * d;
    den += static_cast<double>(y[i]) * static_cast<double>(y[i]);
  }
  return std::sqrt(num / den);
}

template <class Model>
struct Exported {
  std::unique_ptr<Model> model;  // on the run's device
  Tensor<std::int64_t> ids;      // on the run's device
  Tensor<float> logits;          // on the CPU
};

// Builds a random model of `config`, writes it as OUT/<name> with kiln's checkpoint writer, runs
// random ids [B, S] through it on `device` and writes ids and logits to OUT/<name>.kiln.safetensors.
template <class Model, class Config>
Exported<Model> export_model(const std::string& out, const std::string& name, const Config& config, Device device,
                             Generator& gen) {
  auto model = std::make_unique<Model>(config, gen);
  randomise_constants(*model, gen);
  io::save_model(out + "/" + name, *model, config);

  const Tensor<std::int64_t> ids = randint<std::int64_t>(0, config.vocab_size, {kBatch, kSeq}, Device::cpu(), gen);
  model->to(device);
  NoGradGuard no_grad;
  const Tensor<float> logits = to(model->forward(to(ids, device)), Device::cpu());
  io::save_safetensors(out + "/" + name + ".kiln.safetensors",
                       {io::NamedTensor("input_ids", ids), io::NamedTensor("logits", logits)},
                       {{"producer", "kiln hf_export"}});
  std::printf("%s: %lld parameters, logits %s written to %s/%s\n", name.c_str(),
              static_cast<long long>(model->num_parameters()), str(logits.shape()).c_str(), out.c_str(), name.c_str());
  return {std::move(model), to(ids, device), logits};
}

// The routing bias must decide some choices, or "bias only for the choice" is not tested: with the
// bias zeroed the logits have to change (they would not if no choice moved).
void check_routing_bias_matters(Exported<nn::DeepseekV3ForCausalLM<float>>& e) {
  NoGradGuard no_grad;
  for (auto& [index, moe] : e.model->moe_layers())
    moe->gate.e_score_correction_bias = zeros_like(moe->gate.e_score_correction_bias);
  const double moved = relative_difference(to(e.model->forward(e.ids), Device::cpu()), e.logits);
  std::printf("deepseek_v3: zeroing the routing bias changes the logits by %.3g (relative)\n", moved);
  check(moved > 1e-3, "hf_export", "the routing bias changes no expert choice (logits move by ", moved,
        "): pick another seed or a larger bias");
}

const char* kUsage = "usage: hf_export --out DIR [--device cpu|cuda] [--seed N]\n";
constexpr int kSkip = 77;  // ctest's skip code (SKIP_RETURN_CODE of hf_logits)

}  // namespace

int main(int argc, char** argv) try {
  std::string out, device_name = "cpu";
  std::uint64_t seed = 1234;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fputs(kUsage, stderr);
      return 2;
    }
    if (a == "--out") out = argv[++i];
    else if (a == "--device") device_name = argv[++i];
    else if (a == "--seed") seed = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fputs(kUsage, stderr);
      return 2;
    }
  }
  if (out.empty() || (device_name != "cpu" && device_name != "cuda")) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  Device device = Device::cpu();
  if (device_name == "cuda") {
#ifdef KILN_HF_EXPORT_CUDA
    if (!cuda::available()) {
      std::puts("hf_export: --device cuda but no CUDA device: skipped");
      return kSkip;
    }
    cuda::set_allow_tf32(false);  // the check is about fp32: TF32 products would miss 1e-4 by design
    device = Device::cuda(0);
#else
    throw Error("--device cuda needs a build with the CUDA backend (cmake -DKILN_CUDA=ON)");
#endif
  }
  std::filesystem::create_directories(out);
  Generator gen{seed, 0};
  export_model<nn::LlamaForCausalLM<float>>(out, "llama", llama_config(), device, gen);
  auto deepseek = export_model<nn::DeepseekV3ForCausalLM<float>>(out, "deepseek_v3", deepseek_config(), device, gen);
  check_routing_bias_matters(deepseek);
  std::printf("kiln ran on %s\n", device_name.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hf_export: %s\n", e.what());
  return 1;
}
