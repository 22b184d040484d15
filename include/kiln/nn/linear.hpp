// The basic building blocks of a transformer, laid out as in Hugging Face checkpoints:
//   Linear     y = x·Wᵀ + b, weight [out, in] (torch.nn.Linear's layout), bias [out] optional;
//              optionally with its products in FP8 (`fp8`; nn/fp8_training.hpp);
//   Embedding  rows of a [num, dim] table picked by integer ids;
//   RMSNorm    x / sqrt(mean(x²) + eps) * weight, weight [dim] (Llama / DeepSeek-V3 RMSNorm);
//   SwiGLUMLP  down_proj(silu(gate_proj(x)) * up_proj(x)) (Llama MLP, DeepSeek-V3 dense MLP and experts);
//   linears_on_one_input: linears reading one x as one product over their stacked weights.
// Weights are drawn from normal(0, init_std) with the caller's Generator, so a model built twice
// from the same seed is the same bit for bit; norm weights start at 1, biases at 0.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "kiln/core/random.hpp"
#include "kiln/nn/fp8_linear.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/embedding.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/matmul.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::nn {

// x [..., in] · weightᵀ (+ bias) -> [..., out], weight [out, in], bias [out] or undefined. The
// transposed weight is a view: the matrix product reads it in place.
template <class T>
Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias = Tensor<T>()) {
  check_defined("linear", x, weight);
  check(weight.dim() == 2, "linear", "weight must be 2-D [out, in], got shape ", weight.shape());
  check(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear", "input of shape ", x.shape(),
        " does not fit weight of shape ", weight.shape(), " (expected [..., ", weight.size(1), "])");
  if (bias.defined())
    check(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear", "bias of shape ", bias.shape(),
          " does not fit weight of shape ", weight.shape());
  Tensor<T> y = matmul(x, transpose(weight, 0, 1));
  return bias.defined() ? add(y, bias) : y;
}

template <class T>
class Linear : public Module<T> {
 public:
  Linear(std::int64_t in, std::int64_t out, bool with_bias, double init_std, Generator& gen)
      : in_features(in), out_features(out) {
    check(in > 0 && out > 0, "Linear", "sizes must be positive, got in ", in, ", out ", out);
    weight = randn<T>({out, in}, 0.0, init_std, Device::cpu(), gen);
    this->register_parameter("weight", &weight);
    if (with_bias) {
      bias = zeros<T>({out});
      this->register_parameter("bias", &bias);
    }
  }

  // x [..., in] -> [..., out]. In FP8 mode the product x·Wᵀ and its two backward products run
  // through fp8_linear (x and dY in 1×128 tiles, W in 128×128 blocks), the bias is added after.
  Tensor<T> forward(const Tensor<T>& x) const {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {
      if (fp8) {
        const Tensor<T> y = fp8_linear(x, weight, *fp8);
        return bias.defined() ? add(y, bias) : y;
      }
    } else {
      check(!fp8, "Linear", "FP8 mode needs float or bf16 weights, got ", dtype_of<T>);
    }
    return linear(x, weight, bias);
  }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  // residual + forward(x) (residual of the output's shape): a residual connection. Without bias
  // or FP8 mode, one product that adds the residual in its epilogue (matmul_add: on a GPU one
  // launch fewer, rounded once; differentiable); otherwise add(residual, forward(x)).
  Tensor<T> forward_add(const Tensor<T>& x, const Tensor<T>& residual) const {
    check_defined("Linear", x, residual);
    if (bias.defined() || fp8 || x.dim() < 2) return add(residual, forward(x));
    check(x.size(-1) == in_features, "Linear", "input of shape ", x.shape(), " does not fit in_features = ",
          in_features);
    return matmul_add(x, transpose(weight, 0, 1), residual);
  }

  std::int64_t in_features, out_features;
  Tensor<T> weight;  // [out, in]
  Tensor<T> bias;    // [out], undefined without bias
  std::optional<Fp8LinearOptions> fp8;  // set: FP8 mode (see forward)
};

// Linears that read the same x (MLA's q_a and kv_a, Llama's q, k and v, an MLP's gate and up), as
// one product over their weights stacked along the outputs where that computes the same function:
// no biases, one precision (every linear in FP8 with equal options, or none), and in FP8 every
// part but the last a whole number of 128-row weight blocks, so each 128×128 block of the stacked
// weight lies in one part and no 1×128 tile of the output gradient straddles two. One product
// then shares the read of x (in FP8 its quantization, both tilings), the launches, and the sum of
// the input's gradients (one data-gradient product over all parts, accumulated in FP32, instead of
// one per part and an add). Stacking copies the weights, so it is done only when a backward will
// follow (autograd recording, the weights or x requiring grad): in generation's forward-only steps
// the copy would cost more than the one launch it saves. Otherwise each linear runs alone. Returns
// the outputs in order, each [..., out_i] (views of the stacked output when stacked).
template <class T>
bool stackable(const std::vector<const Linear<T>*>& linears, const Tensor<T>& x) {
  if (linears.size() < 2) return false;
  bool backward = autograd::needs_grad(x);
  for (const Linear<T>* l : linears) backward = backward || autograd::needs_grad(l->weight);
  if (!backward) return false;
  const Linear<T>& first = *linears.front();
  for (std::size_t i = 0; i < linears.size(); ++i) {
    const Linear<T>& l = *linears[i];
    if (l.bias.defined() || l.in_features != first.in_features || l.fp8 != first.fp8 ||
        l.weight.device() != first.weight.device())
      return false;
    if (l.fp8 && i + 1 < linears.size() && l.out_features % 128 != 0) return false;
  }
  return true;
}

template <class T>
std::vector<Tensor<T>> linears_on_one_input(const Tensor<T>& x, const std::vector<const Linear<T>*>& linears) {
  std::vector<Tensor<T>> out;
  if (!stackable(linears, x)) {
    for (const Linear<T>* l : linears) out.push_back((*l)(x));
    return out;
  }
  std::vector<Tensor<T>> weights;
  std::vector<std::int64_t> sizes;
  for (const Linear<T>* l : linears) {
    weights.push_back(l->weight);
    sizes.push_back(l->out_features);
  }
  const Tensor<T> w = cat(weights, 0);
  Tensor<T> y;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {
    if (linears.front()->fp8) y = fp8_linear(x, w, *linears.front()->fp8);
  }
  if (!y.defined()) y = linear(x, w);
  return split(y, sizes, -1);
}

template <class T>
class Embedding : public Module<T> {
 public:
  Embedding(std::int64_t num, std::int64_t dim, double init_std, Generator& gen)
      : num_embeddings(num), embedding_dim(dim) {
    check(num > 0 && dim > 0, "Embedding", "sizes must be positive, got ", num, " x ", dim);
    weight = randn<T>({num, dim}, 0.0, init_std, Device::cpu(), gen);
    this->register_parameter("weight", &weight);
  }

  // ids of any shape -> [ids..., dim].
  Tensor<T> forward(const Tensor<std::int64_t>& ids) const { return embedding(weight, ids); }
  Tensor<T> operator()(const Tensor<std::int64_t>& ids) const { return forward(ids); }

  std::int64_t num_embeddings, embedding_dim;
  Tensor<T> weight;  // [num, dim]
};

template <class T>
class RMSNorm : public Module<T> {
 public:
  explicit RMSNorm(std::int64_t dim, double epsilon = 1e-6) : eps(epsilon) {
    check(dim > 0, "RMSNorm", "dim must be positive, got ", dim);
    weight = ones<T>({dim});
    this->register_parameter("weight", &weight);
  }

  // Normalises the last dim of x [..., dim].
  Tensor<T> forward(const Tensor<T>& x) const { return rms_norm(x, weight, eps); }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  double eps;
  Tensor<T> weight;  // [dim]
};

// The gated MLP of Llama and DeepSeek-V3: silu(x·Wgᵀ) ⊙ (x·Wuᵀ), projected back by Wd. `bias` is
// only for Llama configs with mlp_bias (DeepSeek-V3 has none).
template <class T>
class SwiGLUMLP : public Module<T> {
 public:
  SwiGLUMLP(std::int64_t hidden_size, std::int64_t intermediate_size, double init_std, Generator& gen,
            bool bias = false)
      : gate_proj(hidden_size, intermediate_size, bias, init_std, gen),
        up_proj(hidden_size, intermediate_size, bias, init_std, gen),
        down_proj(intermediate_size, hidden_size, bias, init_std, gen) {
    this->register_module("gate_proj", &gate_proj);
    this->register_module("up_proj", &up_proj);
    this->register_module("down_proj", &down_proj);
  }

  // x [..., hidden] -> [..., hidden]. The gate and up products as one where they stack
  // (linears_on_one_input), and swiglu's one pass for silu(gate) ⊙ up.
  Tensor<T> forward(const Tensor<T>& x) const {
    const std::vector<Tensor<T>> gate_up = linears_on_one_input<T>(x, {&gate_proj, &up_proj});
    return down_proj(swiglu(gate_up[0], gate_up[1]));
  }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }
  // residual + forward(x), the residual added in down_proj's product (Linear::forward_add).
  Tensor<T> forward_add(const Tensor<T>& x, const Tensor<T>& residual) const {
    const std::vector<Tensor<T>> gate_up = linears_on_one_input<T>(x, {&gate_proj, &up_proj});
    return down_proj.forward_add(swiglu(gate_up[0], gate_up[1]), residual);
  }

  Linear<T> gate_proj, up_proj, down_proj;
};

}  // namespace kiln::nn
