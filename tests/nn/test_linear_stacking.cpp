// linears_on_one_input (nn/linear.hpp): linears that read one x, run as one product over their
// weights stacked along the outputs (MLA's q_a and kv_a, an MLP's gate and up). In FP8 the stacked
// product computes the separate products' function: the outputs and the weight gradients bit for
// bit (every 128×128 weight block and every 1×128 tile of the output gradient lies in one part),
// the input gradient within float rounding (one FP32 sum over all parts instead of one per part
// and an add). The cases that do not stack run each linear alone: bit for bit.
#include <kiln/nn/linear.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

template <class T>
struct Layers {
  std::vector<std::unique_ptr<nn::Linear<T>>> linears;  // modules do not move
  std::vector<const nn::Linear<T>*> pointers() const {
    std::vector<const nn::Linear<T>*> p;
    for (const auto& l : linears) p.push_back(l.get());
    return p;
  }
};

// Linears of `outs` features from `in`, the same weights for the same seed.
template <class T>
Layers<T> make(std::int64_t in, const std::vector<std::int64_t>& outs, bool bias,
               const std::optional<nn::Fp8LinearOptions>& fp8) {
  Generator gen{11, 0};
  Layers<T> l;
  for (std::int64_t out : outs) {
    auto& lin = *l.linears.emplace_back(std::make_unique<nn::Linear<T>>(in, out, bias, 0.05, gen));
    lin.weight.requires_grad_();
    if (bias) lin.bias = cast<T>(randn<float>({out}, 0.0, 0.5, Device::cpu(), gen)).detach().requires_grad_();
    lin.fp8 = fp8;
  }
  return l;
}

struct Run {
  std::vector<Tensor<float>> outputs, weight_grads;
  Tensor<float> input_grad;
  bool stacked = false;
};

// Forward (stacked or each alone), then backward of Σ_i sum(y_i ⊙ dy_i).
template <class T>
Run run(const Layers<T>& layers, const Tensor<T>& x_values, const std::vector<Tensor<T>>& dys, bool together) {
  const Tensor<T> x = x_values.detach().requires_grad_();
  std::vector<Tensor<T>> ys;
  if (together) {
    ys = nn::linears_on_one_input<T>(x, layers.pointers());
  } else {
    for (const auto& l : layers.linears) ys.push_back((*l)(x));
  }
  Tensor<T> loss;
  for (std::size_t i = 0; i < ys.size(); ++i) {
    const Tensor<T> term = sum(mul(ys[i], dys[i]));
    loss = loss.defined() ? add(loss, term) : term;
  }
  loss.backward();
  Run r;
  for (const auto& y : ys) r.outputs.push_back(cast<float>(y.detach()));
  for (const auto& l : layers.linears) r.weight_grads.push_back(cast<float>(l->weight.grad()));
  r.input_grad = cast<float>(x.grad());
  r.stacked = ys.size() > 1 && ys[0].storage() == ys[1].storage();
  return r;
}

void expect_bits(const Tensor<float>& a, const Tensor<float>& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const auto av = a.to_vector(), bv = b.to_vector();
  for (std::size_t i = 0; i < av.size(); ++i) ASSERT_EQ(av[i], bv[i]) << what << " element " << i;
}

// `stacks`: whether these linears should run as one product. input_tol: the input gradient's
// bound when stacked (the same bits otherwise); outputs_exact: the outputs and weight gradients
// must be bit for bit (FP8), else within input_tol too.
template <class T>
void check(std::int64_t in, const std::vector<std::int64_t>& outs, bool bias,
           const std::optional<nn::Fp8LinearOptions>& fp8, bool stacks, double input_tol, bool outputs_exact) {
  SCOPED_TRACE(str(dtype_name<T>, " in ", in, " outs ", outs, bias ? " with bias" : "", fp8 ? " FP8" : ""));
  const Tensor<T> x = cast<T>(randn<float>({3, 5, in}));
  std::vector<Tensor<T>> dys;
  for (std::int64_t out : outs) dys.push_back(cast<T>(randn<float>({3, 5, out})));
  const Run together = run(make<T>(in, outs, bias, fp8), x, dys, true);
  const Run alone = run(make<T>(in, outs, bias, fp8), x, dys, false);
  EXPECT_EQ(together.stacked, stacks);
  for (std::size_t i = 0; i < outs.size(); ++i) {
    if (outputs_exact || !stacks) {
      expect_bits(together.outputs[i], alone.outputs[i], str("output ", i));
      expect_bits(together.weight_grads[i], alone.weight_grads[i], str("weight gradient ", i));
    } else {
      EXPECT_LE(relative_error(together.outputs[i], alone.outputs[i]).relative, input_tol) << "output " << i;
      EXPECT_LE(relative_error(together.weight_grads[i], alone.weight_grads[i]).relative, input_tol)
          << "weight gradient " << i;
    }
  }
  if (stacks) {
    EXPECT_LE(relative_error(together.input_grad, alone.input_grad).relative, input_tol);
  } else {
    expect_bits(together.input_grad, alone.input_grad, "input gradient");
  }
}

}  // namespace

TEST(LinearStacking, Fp8PartsOfWholeBlocksStackToTheSameFunction) {
  const nn::Fp8LinearOptions fp8{};
  // float: the input gradient's two FP32 sums differ in rounding only (unit roundoff 6e-8).
  check<float>(200, {256, 70}, false, fp8, true, 1e-6, true);
  check<float>(300, {128, 384, 33}, false, fp8, true, 1e-6, true);
  // bf16: alone, each part's input gradient is rounded to bf16 and their sum again (three
  // roundings of unit roundoff 2^-9 = 0.2%), stacked once.
  check<bf16>(200, {256, 70}, false, fp8, true, 4e-3, true);
}

TEST(LinearStacking, WhatDoesNotStackRunsEachLinearAlone) {
  const nn::Fp8LinearOptions fp8{};
  check<float>(200, {70, 256}, false, fp8, false, 0.0, true);   // a part of 70 rows: blocks would straddle
  check<float>(200, {256, 70}, true, fp8, false, 0.0, true);    // biases
  check<float>(200, {256, 70}, true, std::nullopt, false, 0.0, true);
  // Mixed precision: one FP8 linear, one plain.
  Layers<float> mixed = make<float>(64, {128, 40}, false, fp8);
  mixed.linears[1]->fp8.reset();
  const Tensor<float> x = randn<float>({4, 64}).requires_grad_();
  const std::vector<Tensor<float>> ys = nn::linears_on_one_input<float>(x, mixed.pointers());
  EXPECT_NE(ys[0].storage(), ys[1].storage());
  // Without a backward to follow (generation), nothing is stacked.
  {
    NoGradGuard no_grad;
    const Layers<float> plain = make<float>(64, {128, 40}, false, fp8);
    const std::vector<Tensor<float>> zs = nn::linears_on_one_input<float>(x, plain.pointers());
    EXPECT_NE(zs[0].storage(), zs[1].storage());
    expect_bits(zs[0], (*plain.linears[0])(x), "output 0 without grad");
  }
}

TEST(LinearStacking, PlainLinearsStackWithinFloatRounding) {
  check<float>(96, {70, 33, 5}, false, std::nullopt, true, 1e-6, false);
  check<double>(96, {70, 33}, false, std::nullopt, true, 1e-14, false);
}
