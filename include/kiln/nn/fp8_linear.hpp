// fp8_linear: y = x·Wᵀ with its three GEMMs in FP8 as in DeepSeek-V3 (ops/fp8_gemm.hpp). Used by
// Fp8Linear (a bias-free layer with FP32 master weights, [out, in], Hugging Face layout, name
// "weight") and by nn::Linear in FP8 mode (nn/fp8_training.hpp: a model's linears in FP8, with
// bf16 weights whose FP32 masters the optimizer keeps).
//
// With x [T, in] (leading dims of x flattened into T tokens), W [out, in], dY [T, out]:
//   forward   Y  = x · Wᵀ    A = x   1×128 tiles along in,     B = W   128×128 blocks
//   dgrad     dX = dY · W    A = dY  1×128 tiles along out,    B = Wᵀ  128×128 blocks (quantize_transposed)
//   wgrad     dW = dYᵀ · x   A = dYᵀ 1×128 tiles along tokens, B = xᵀ  1×128 tiles along tokens
//                            (both quantize_transposed)
// Activations and their gradients get fine-grained 1×128 tiles (outliers stay local to a tile);
// weights get 128×128 blocks, which are the same set of elements for W and Wᵀ. Y and dX come out
// in x's dtype (float or bf16), dW in W's dtype (float or bf16). Each operand is quantized once
// for both of its uses (fp8::quantize_with_transposed: one read on the GPU): x in the forward (the
// backward keeps xᵀ's FP8 copy instead of x), W in the forward (keeping Wᵀ's blocks for the data
// gradient), dY in the backward.
// On the CPU the GEMMs run on kiln's CPU FP8 GEMM (the same function), so a model can be trained
// and tested without a GPU. Fp8LinearOptions can leave any of the three products unquantized (an
// ablation of the recipe).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kiln/autograd/node.hpp"
#include "kiln/core/random.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/grouped_fp8_gemm.hpp"
#include "kiln/ops/grouped_linear.hpp"
#include "kiln/ops/k_grouped_fp8_gemm.hpp"
#include "kiln/ops/matmul.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::nn {

struct Fp8LinearOptions {
  fp8::QuantizeOptions quantize{};  // for activations and weights
  // For the output gradient dY (and dYᵀ). Its magnitude is the loss's scale over the batch: a mean
  // over 16K tokens late in training puts whole tiles near 1e-7, and a fixed amax floor of 1e-4
  // (the activations' default) would then scale them to a few e4m3 units, leaving their smaller
  // elements subnormal or zero. Measured (tests/nn/test_fp8_training.cpp): a step's gradient error
  // against the unquantized step is 4.6% at the test's loss scale, 5.3% at 1e-5 of it and 49% at
  // 1e-7 with the 1e-4 floor; this floor (the smallest QuantizeOptions allows) only keeps an
  // all-zero tile's scale non-zero.
  fp8::QuantizeOptions gradient{.amax_floor = 1e-30f};
  fp8::GemmOptions gemm{};
  // Which of the three products run in FP8; the others run unquantized in the activations' dtype
  // (FP32 accumulation), as a plain linear's would. DeepSeek-V3 runs all three in FP8; switching
  // one off measures its share of FP8's error (pretrain --fp8-gemms, --fp8-probe). The grouped
  // form (grouped_fp8_linear) follows fp8_wgrad only with grouped_fp8_wgrad as well.
  bool fp8_forward = true, fp8_dgrad = true, fp8_wgrad = true;
  // The grouped form's weight gradient in FP8 too, through the k-grouped FP8 GEMM
  // (ops/k_grouped_fp8_gemm.hpp: 1×128 tiles along each expert's own tokens, DeepSeek-V3's recipe).
  // Off by default: on an H100 the Hopper k-grouped GEMM beats the unquantized grouped weight
  // gradient by 1.02-1.18× at the big config's shapes, but its two quantization passes make the
  // whole product 0.41-0.51× as fast (docs/fp8-gemm.md). The per-expert (composed) path's weight
  // gradients follow fp8_wgrad alone.
  bool grouped_fp8_wgrad = false;

  bool operator==(const Fp8LinearOptions&) const = default;
};

// x [..., in] (float or bf16) · weightᵀ (weight [out, in], float or bf16) -> [..., out] in x's
// dtype, every product in FP8 (see the header comment). Differentiable in x and weight.
template <class A, class W>
Tensor<A> fp8_linear(const Tensor<A>& x, const Tensor<W>& weight, const Fp8LinearOptions& options = {}) {
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, bf16>, "fp8_linear: activations are float or bfloat16");
  static_assert(std::is_same_v<W, float> || std::is_same_v<W, bf16>, "fp8_linear: weights are float or bfloat16");
  const char* op = "fp8_linear";
  check_defined(op, x, weight);
  check_same_device(op, x, weight);
  check(weight.dim() == 2, op, "weight must be 2-D [out, in], got shape ", weight.shape());
  check(x.dim() >= 1 && x.size(-1) == weight.size(1), op, "input of shape ", x.shape(), " does not fit weight of shape ",
        weight.shape(), " (expected [..., ", weight.size(1), "])");
  const std::int64_t in = weight.size(1), out = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  const std::int64_t tokens = x.numel() / in;
  if (tokens == 0) return zeros<A>(out_shape, x.device());

  const Tensor<A> x2 = reshape(x.detach(), {tokens, in});
  // xᵀ's FP8 copy for the weight gradient and Wᵀ's for the data gradient, made with the forward's
  // quantizations of x and W when those products are FP8 too; the backward then needs nothing else
  // of x.
  fp8::QuantizedMatrix qxt, qwt;
  const bool xt_now = options.fp8_forward && options.fp8_wgrad && autograd::needs_grad(weight);
  const bool wt_now = options.fp8_forward && options.fp8_dgrad && autograd::needs_grad(x);
  Tensor<A> y;
  if (options.fp8_forward) {
    fp8::QuantizedMatrix qx, qw;
    if (xt_now) {
      fp8::QuantizedPair both = fp8::quantize_with_transposed(x2, fp8::Tiling::row_1x128, options.quantize);
      qx = std::move(both.plain);
      qxt = std::move(both.transposed);
    } else {
      qx = fp8::quantize(x2, fp8::Tiling::row_1x128, options.quantize);
    }
    if (wt_now) {
      fp8::QuantizedPair both = fp8::quantize_with_transposed(weight.detach(), fp8::Tiling::block_128x128,
                                                              options.quantize);
      qw = std::move(both.plain);
      qwt = std::move(both.transposed);
    } else {
      qw = fp8::quantize(weight.detach(), fp8::Tiling::block_128x128, options.quantize);
    }
    y = reshape(fp8::gemm<A>(qx, qw, options.gemm), out_shape);
  } else {
    y = reshape(matmul(x2, transpose(cast<A>(weight.detach()), 0, 1)), out_shape);
  }
  if (!autograd::needs_grad(x, weight)) return y;

  autograd::record(y, op,
                   [options, x2 = xt_now ? Tensor<A>() : x2, qxt, qwt, w = weight.detach(), x_shape = x.shape(),
                    tokens, out](const Tensor<A>& g, const autograd::InputGrads& grads) {
    const Tensor<A> g2 = reshape(g, {tokens, out});
    // dY in both tilings from one read when both gradients are FP8.
    fp8::QuantizedMatrix qg, qgt;
    if (grads.needs(0) && options.fp8_dgrad && grads.needs(1) && options.fp8_wgrad) {
      fp8::QuantizedPair both = fp8::quantize_with_transposed(g2, fp8::Tiling::row_1x128, options.gradient);
      qg = std::move(both.plain);
      qgt = std::move(both.transposed);
    }
    if (grads.needs(0)) {
      if (options.fp8_dgrad) {
        if (!qg.data.defined()) qg = fp8::quantize(g2, fp8::Tiling::row_1x128, options.gradient);
        const fp8::QuantizedMatrix wt =
            qwt.data.defined() ? qwt : fp8::quantize_transposed(w, fp8::Tiling::block_128x128, options.quantize);
        grads.add(0, reshape(fp8::gemm<A>(qg, wt, options.gemm), x_shape));
      } else {
        grads.add(0, reshape(matmul(g2, cast<A>(w)), x_shape));
      }
    }
    if (grads.needs(1)) {
      if (options.fp8_wgrad) {
        if (!qgt.data.defined()) qgt = fp8::quantize_transposed(g2, fp8::Tiling::row_1x128, options.gradient);
        const fp8::QuantizedMatrix xt =
            qxt.data.defined() ? qxt : fp8::quantize_transposed(x2, fp8::Tiling::row_1x128, options.quantize);
        grads.add(1, fp8::gemm<W>(qgt, xt, options.gemm));
      } else {
        grads.add(1, cast<W>(matmul(transpose(g2, 0, 1), x2)));
      }
    }
  }, x, weight);
  return y;
}

// The grouped form, for the routed experts of an MoE layer (nn::MoE's fused path): x [R, K] with
// rows sorted by expert, group g owning rows offsets[g] .. offsets[g+1] − 1 (offsets [G + 1] on
// x's device, never read by the host on a GPU), weight [G, N, K] (G stacked [out, in] weights)
// -> [R, N], row r times weight[g(r)]ᵀ. T = float or bf16 (bf16 on a GPU).
//   forward  Y  = x · W_gᵀ   fp8::grouped_gemm: A = x in 1×128 tiles (a tile lies in one row, so
//                             one quantization of all rows serves every group), B = W_g in
//                             128×128 blocks (fp8::quantize_grouped)
//   dgrad    dX = dY · W_g   A = dY in 1×128 tiles, B = W_gᵀ in 128×128 blocks (the same element
//                             sets, fp8::quantize_grouped_transposed)
//   wgrad    dW_g = dY_gᵀ · x_g  in T (the grouped GEMM's wgrad, FP32 accumulation); or, with
//                             options.fp8_wgrad and grouped_fp8_wgrad, in FP8 as DeepSeek-V3 runs
//                             it: dY_gᵀ and x_gᵀ in 1×128 tiles along each expert's own tokens
//                             (fp8::quantize_k_grouped, fp8::k_grouped_gemm), bit for bit what
//                             fp8_linear's weight gradient gives each expert's rows alone on the CPU.
// Differentiable in x and weight.
template <class T>
Tensor<T> grouped_fp8_linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<std::int64_t>& offsets,
                             const Fp8LinearOptions& options = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "grouped_fp8_linear: float or bfloat16");
  const char* op = "grouped_fp8_linear";
  const Tensor<std::int64_t> oc = detail::check_grouped_linear(op, x, weight, offsets);
  const std::int64_t G = weight.size(0), N = weight.size(1);
  const Tensor<T> xc = detail::contiguous_aligned(x.detach());
  const Tensor<T> w = weight.detach();
  Tensor<T> y;
  fp8::GroupedWeights qwt;  // W_gᵀ's blocks for the data gradient, from the forward's read of W
  if (options.fp8_forward) {
    const fp8::QuantizedMatrix qx = fp8::quantize(xc, fp8::Tiling::row_1x128, options.quantize);
    fp8::GroupedWeights qw;
    if (options.fp8_dgrad && autograd::needs_grad(x)) {
      fp8::GroupedWeightsPair both = fp8::quantize_grouped_with_transposed(w, options.quantize);
      qw = std::move(both.plain);
      qwt = std::move(both.transposed);
    } else {
      qw = fp8::quantize_grouped(w, options.quantize);
    }
    y = fp8::grouped_gemm<T>(qx, qw, oc);
  } else {
    y = detail::grouped_linear_forward(op, xc, detail::contiguous_aligned(w), oc);
  }
  if (!autograd::needs_grad(x, weight)) return y;

  autograd::record(y, op, [options, xc, w, qwt, oc, G, N](const Tensor<T>& g, const autograd::InputGrads& grads) {
    const char* bop = "grouped_fp8_linear backward";
    const Tensor<T> dy = detail::contiguous_aligned(g);
    if (grads.needs(0)) {
      if (options.fp8_dgrad) {
        const fp8::QuantizedMatrix qg = fp8::quantize(dy, fp8::Tiling::row_1x128, options.gradient);
        grads.add(0, fp8::grouped_gemm<T>(
                         qg, qwt.data.defined() ? qwt : fp8::quantize_grouped_transposed(w, options.quantize), oc));
      } else {
        grads.add(0, detail::grouped_linear_dgrad(bop, dy, detail::contiguous_aligned(w), oc));
      }
    }
    if (grads.needs(1)) {
      if (options.fp8_wgrad && options.grouped_fp8_wgrad) {
        const fp8::KGroupedMatrix qg = fp8::quantize_k_grouped(dy, oc, options.gradient);
        const fp8::KGroupedMatrix qx = fp8::quantize_k_grouped(xc, oc, options.quantize);
        grads.add(1, fp8::k_grouped_gemm<T>(qg, qx));
      } else {
        grads.add(1, detail::grouped_linear_wgrad(bop, xc, dy, oc, G, N));
      }
    }
  }, x, weight);
  return y;
}

template <class T = float>
class Fp8Linear : public Module<T> {
 public:
  static_assert(std::is_same_v<T, float>, "Fp8Linear keeps float master weights");

  Fp8Linear(std::int64_t in, std::int64_t out, double init_std, Generator& gen, Fp8LinearOptions opts = {})
      : in_features(in), out_features(out), options(opts) {
    check(in > 0 && out > 0, "Fp8Linear", "sizes must be positive, got in ", in, ", out ", out);
    weight = randn<T>({out, in}, 0.0, init_std, Device::cpu(), gen);
    this->register_parameter("weight", &weight);
  }

  // x [..., in] float or bf16 -> [..., out] in x's dtype.
  template <class A>
  Tensor<A> forward(const Tensor<A>& x) const {
    return fp8_linear(x, weight, options);
  }
  template <class A>
  Tensor<A> operator()(const Tensor<A>& x) const {
    return forward(x);
  }

  std::int64_t in_features, out_features;
  Fp8LinearOptions options;
  Tensor<T> weight;  // [out, in]
};

}  // namespace kiln::nn
