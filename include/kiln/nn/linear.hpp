// The basic building blocks of a transformer, laid out as in Hugging Face checkpoints:
//   Linear     y = x·Wᵀ + b, weight [out, in] (torch.nn.Linear's layout), bias [out] optional;
//              optionally with its products in FP8 (`fp8`; nn/fp8_training.hpp);
//   Embedding  rows of a [num, dim] table picked by integer ids;
//   RMSNorm    x / sqrt(mean(x²) + eps) * weight, weight [dim] (Llama / DeepSeek-V3 RMSNorm);
//   SwiGLUMLP  down_proj(silu(gate_proj(x)) * up_proj(x)) (Llama MLP, DeepSeek-V3 dense MLP and experts).
// Weights are drawn from normal(0, init_std) with the caller's Generator, so a model built twice
// from the same seed is the same bit for bit; norm weights start at 1, biases at 0.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>

#include "kiln/core/random.hpp"
#include "kiln/nn/fp8_linear.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/ops/binary.hpp"
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

  std::int64_t in_features, out_features;
  Tensor<T> weight;  // [out, in]
  Tensor<T> bias;    // [out], undefined without bias
  std::optional<Fp8LinearOptions> fp8;  // set: FP8 mode (see forward)
};

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

  // x [..., hidden] -> [..., hidden].
  Tensor<T> forward(const Tensor<T>& x) const { return down_proj(mul(silu(gate_proj(x)), up_proj(x))); }
  Tensor<T> operator()(const Tensor<T>& x) const { return forward(x); }

  Linear<T> gate_proj, up_proj, down_proj;
};

}  // namespace kiln::nn
