// Fixtures shared by the model tests (tests/nn/, tests/train/, tests/infer/, tests/dist/):
//   - module-level gradient checks and parameter handling (randomise, copy across dtypes, list
//     state names);
//   - building blocks of the plain-double references: a model's state as named vectors (Params)
//     and linear / RMSNorm / slice / dot over them, in Hugging Face's order of operations;
//   - the tiny DeepSeek-V3 config of the model and trainer tests, and token-id helpers.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <kiln/nn/config.hpp>
#include <kiln/nn/module.hpp>

#include "test_util.hpp"

namespace kiln::testing {

using Vec = std::vector<double>;

// ---- modules -----------------------------------------------------------------------------------

// gradcheck of f(inputs) in the inputs and in every parameter of m: the parameters become extra
// gradcheck inputs, written into the module's slots before each evaluation.
template <class M, class F>
GradcheckResult module_gradcheck(const M& m, const std::vector<Tensor<double>>& inputs, F f) {
  std::vector<Tensor<double>> all = inputs;
  for (auto& [name, p] : m.named_parameters()) all.push_back(p.detach());
  const std::size_t n = inputs.size();
  return gradcheck(
      [&](const std::vector<Tensor<double>>& x) {
        std::size_t i = n;
        m.visit("", [&](const std::string&, Tensor<double>* t, bool trainable) {
          if (trainable) *t = x[i++];
        });
        return f(std::vector<Tensor<double>>(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(n)));
      },
      all);
}

// Replaces every parameter and buffer by normal(0, scale) draws (norm weights included, so that
// they matter).
template <class M>
void randomize(M& m, std::uint64_t seed, double scale = 0.5) {
  Generator gen{seed, 0};
  m.visit("", [&](const std::string&, Tensor<double>* t, bool) {
    *t = randn<double>(t->shape(), 0.0, scale, Device::cpu(), gen).requires_grad_();
  });
}

// Writes src's parameters and buffers (cast to U) into dst, which has the same names and shapes.
template <class U, class Dst, class Src>
void copy_params(Dst& dst, const Src& src) {
  const auto s = src.state();
  std::size_t i = 0;
  dst.visit("", [&](const std::string& name, Tensor<U>* t, bool) {
    ASSERT_EQ(name, s[i].first);
    *t = cast<U>(s[i++].second.detach());
  });
}

// The names of m.state(), in order.
template <class M>
std::vector<std::string> state_names(const M& m) {
  std::vector<std::string> out;
  for (auto& [name, t] : m.state()) out.push_back(name);
  return out;
}

// m.state() by name.
template <class T>
std::map<std::string, Tensor<T>> named_state(const nn::Module<T>& m) {
  std::map<std::string, Tensor<T>> out;
  for (auto& [name, t] : m.state()) out[name] = t;
  return out;
}

// ---- plain-double references --------------------------------------------------------------------

// A model's state as row-major vectors by name.
struct Params {
  std::map<std::string, Vec> p;
  const Vec& operator[](const std::string& name) const { return p.at(name); }
  bool has(const std::string& name) const { return p.count(name) > 0; }
};

template <class M>
Params params_of(const M& m) {
  Params out;
  for (auto& [name, t] : m.state()) out.p[name] = t.to_vector();
  return out;
}

// W [out, in] · x (+ b) for the linear layer `name` ("<name>.weight", optional "<name>.bias").
inline Vec lin(const Params& P, const std::string& name, const Vec& x) {
  const Vec& w = P[name + ".weight"];
  const std::size_t in = x.size(), out = w.size() / in;
  Vec y(out, 0.0);
  for (std::size_t o = 0; o < out; ++o) {
    double s = P.has(name + ".bias") ? P[name + ".bias"][o] : 0.0;
    for (std::size_t i = 0; i < in; ++i) s += w[o * in + i] * x[i];
    y[o] = s;
  }
  return y;
}

// x / sqrt(mean(x²) + eps) * "<name>.weight".
inline Vec rms(const Params& P, const std::string& name, const Vec& x, double eps) {
  double ms = 0.0;
  for (double v : x) ms += v * v;
  const double inv = 1.0 / std::sqrt(ms / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * P[name + ".weight"][i];
  return y;
}

inline Vec slice(const Vec& v, std::size_t start, std::size_t n) {
  return Vec(v.begin() + static_cast<std::ptrdiff_t>(start), v.begin() + static_cast<std::ptrdiff_t>(start + n));
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- models and data ----------------------------------------------------------------------------

// A two-layer DeepSeek-V3 model (one dense layer, one MoE layer of 4 experts in 2 groups, top-2
// of 1 group, a shared expert, q_lora_rank) with one MTP module: small enough for gradchecks and
// CPU training tests.
inline nn::DeepseekV3Config tiny_deepseek_config(double initializer_range) {
  nn::DeepseekV3Config c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 8;
  c.num_hidden_layers = 2;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.n_shared_experts = 1;
  c.n_routed_experts = 4;
  c.routed_scaling_factor = 2.5;
  c.kv_lora_rank = 8;
  c.q_lora_rank = 12;
  c.qk_rope_head_dim = 4;
  c.qk_nope_head_dim = 4;
  c.v_head_dim = 4;
  c.n_group = 2;
  c.topk_group = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.initializer_range = initializer_range;
  return c;
}

// Row-major ids [B, S].
inline Tensor<std::int64_t> ids_from(const std::vector<std::int64_t>& v, std::int64_t B, std::int64_t S) {
  return Tensor<std::int64_t>::from_vector(v, {B, S});
}

}  // namespace kiln::testing
