// Every nn module on CUDA against the same module on the CPU: Linear (with and without bias),
// Embedding, RMSNorm, SwiGLUMLP (with and without bias), causal attention (nn/attention.hpp),
// LlamaAttention (GQA, with and without bias) and LlamaDecoderLayer, MLA with and without
// q_lora_rank (naive and absorbed paths), MoE (group-limited routing over several experts, shared
// experts, the sequence-wise balance loss, dense dispatch), a dense DeepseekV3DecoderLayer and an
// MTP module. Each module is built on the CPU with random parameters (norm weights and biases
// included, so that they matter), copied into a second instance that moves .to(gpu), and both run
// the same input: the output, and after backward of sum(y ⊙ r) for a fixed random r the input
// gradient and every parameter gradient (by name), are compared, for float and bf16. Every
// gradient must exist on both devices and live on the GPU. (nn::fp8_linear has its own test:
// test_fp8_linear_cuda.cpp.)
//
// Tolerances (relative Frobenius error, relative_error):
//   float 2e-5: both devices compute in float and differ only in accumulation order (cuBLASLt's
//     GEMM vs Eigen's blocking, the GPU's reductions and softmax vs the CPU's loops) and in the last
//     ulp of exp / rsqrt; with reductions over at most a few hundred terms that is ~1e-7..1e-6
//     per element, and a few such ops are chained in a module. (The CPU float modules are within
//     1e-5 of float64: test_llama.cpp, test_mla.cpp.)
//   bf16 2e-2: every op rounds its output to bf16 (8 significant bits: at most 2^-8 = 3.9e-3 of a
//     value, round to nearest), and
//     where the two devices' float accumulations straddle a rounding boundary the results differ by
//     one bf16 ulp, which the following ops carry on; a module chains up to ~15 such roundings. On
//     the CPU these modules' bf16 outputs and gradients are up to 1.5e-2 from float64 (measured:
//     the gradients of k_proj, q_proj's bias, the MoE gate and the norm weights, sums over all
//     tokens of rounded products), and the GPU's bf16 results are as far from float64, not all in
//     the same direction.
// MoE routing is discontinuous: a token whose two best choice scores lie within rounding of each
// other could pick different experts on the two devices, and a tolerance cannot absorb that. The
// MoE test therefore draws its tokens so that every routing decision has a margin of at least 0.16
// (computed in double from the exact bf16/float inputs and weights), twice the largest
// deviation bf16 rounding can cause in a gap between choice or group scores (below 0.08: see
// well_separated_tokens), and checks that both devices routed alike before comparing values.
#include <kiln/nn/attention.hpp>
#include <kiln/nn/deepseek_v3.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/llama.hpp>
#include <kiln/nn/mla.hpp>
#include <kiln/nn/moe.hpp>
#include <kiln/nn/mtp.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_test_util.hpp"
#include "loopback_exchange.hpp"
#include "nn_test_util.hpp"
#include "routing_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// See the file comment.
template <class T>
constexpr double kTol = std::is_same_v<T, bf16> ? 2e-2 : 2e-5;

// normal(0, stddev) draws from `seed`, rounded to T.
template <class T>
Tensor<T> draw(const Shape& shape, std::uint64_t seed, double stddev = 1.0) {
  Generator gen{seed, 0};
  return cast<T>(randn<float>(shape, 0.0, stddev, Device::cpu(), gen));
}

// A leaf copy of x on `device` that requires grad.
template <class U, class T>
Tensor<U> leaf(const Tensor<T>& x, Device device) {
  return to(clone(cast<U>(x)), device).detach().requires_grad_();
}

// Replaces every parameter and buffer of m by normal(0, scale) draws rounded to T.
template <class T>
void randomize_as(nn::Module<T>& m, std::uint64_t seed, double scale) {
  Generator gen{seed, 0};
  m.visit("", [&](const std::string&, Tensor<T>* t, bool trainable) {
    Tensor<T> v = cast<T>(randn<float>(t->shape(), 0.0, scale, Device::cpu(), gen));
    if (trainable) v.requires_grad_();
    *t = v;
  });
}

// ref (on the CPU) gets dev's parameters and buffers, cast to its type R (R = T here), then dev
// moves to the GPU.
template <class T, class R>
void mirror(nn::Module<T>& dev, nn::Module<R>& ref) {
  const auto s = dev.state();
  std::size_t i = 0;
  ref.visit("", [&](const std::string& name, Tensor<R>* t, bool trainable) {
    ASSERT_EQ(name, s[i].first);
    Tensor<R> v = clone(cast<R>(s[i++].second.detach()));
    if (trainable) v.requires_grad_();
    *t = v;
  });
  dev.to(gpu);
}

// dev gets random parameters (seed, scale), ref the same values, and dev moves to the GPU.
template <class T, class R>
void twin(nn::Module<T>& dev, nn::Module<R>& ref, std::uint64_t seed, double scale) {
  randomize_as(dev, seed, scale);
  mirror(dev, ref);
}

template <class T, class R>
void expect_close(const Tensor<T>& dev, const Tensor<R>& ref, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(dev.defined()) << "undefined on the GPU";
  ASSERT_TRUE(ref.defined()) << "undefined on the CPU";
  EXPECT_EQ(dev.device(), gpu);
  EXPECT_LE(relative_error(on_cpu(dev.detach()), ref.detach()), tol);
}

// x's gradient on the GPU against ref's on the CPU.
template <class T, class R>
void expect_grad_close(const Tensor<T>& dev, const Tensor<R>& ref, double tol, const std::string& what) {
  SCOPED_TRACE("gradient of " + what);
  ASSERT_TRUE(ref.grad().defined()) << "no gradient on the CPU";
  ASSERT_TRUE(dev.grad().defined()) << "no gradient on the GPU";
  expect_close(dev.grad(), ref.grad(), tol, what);
}

// Every parameter gradient, by name: present on both devices, on the GPU, within tol.
template <class T, class R>
void expect_gradients_match(const nn::Module<T>& dev, const nn::Module<R>& ref, double tol) {
  const auto d = dev.named_parameters();
  const auto r = ref.named_parameters();
  ASSERT_EQ(d.size(), r.size());
  ASSERT_FALSE(d.empty());
  for (std::size_t i = 0; i < d.size(); ++i) {
    ASSERT_EQ(d[i].first, r[i].first);
    EXPECT_EQ(d[i].second.device(), gpu) << d[i].first;
    expect_grad_close(d[i].second, r[i].second, tol, "parameter " + d[i].first);
  }
}

// Backward of sum(y ⊙ r) on both devices, r a fixed random tensor of y's shape.
template <class T, class R>
void backward_probe(const Tensor<T>& y_dev, const Tensor<R>& y_ref, std::uint64_t seed) {
  const Tensor<T> r = draw<T>(y_ref.shape(), seed);
  sum(mul(y_dev, to(r, gpu))).backward();
  sum(mul(y_ref, cast<R>(r))).backward();
}

// ---- the cases (T on the GPU against R = T on the CPU) -------------------------------------------

template <class T, class R = T>
void check_linear(bool bias) {
  SCOPED_TRACE(str(dtype_of<T>, bias ? " with bias" : " without bias"));
  Generator g{1, 0};
  nn::Linear<T> dev(37, 29, bias, 0.1, g);
  nn::Linear<R> ref(37, 29, bias, 0.1, g);
  twin(dev, ref, 11, 0.2);
  const Tensor<T> x = draw<T>({3, 5, 37}, 12);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const Tensor<T> yd = dev(xd);
  const Tensor<R> yr = ref(xr);
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 13);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

template <class T, class R = T>
void check_embedding() {
  SCOPED_TRACE(str(dtype_of<T>));
  Generator g{2, 0};
  nn::Embedding<T> dev(41, 19, 1.0, g);
  nn::Embedding<R> ref(41, 19, 1.0, g);
  twin(dev, ref, 21, 1.0);
  // Repeated ids (3, 40): their rows' gradients add up (atomics on the GPU).
  const Tensor<std::int64_t> ids =
      tensor<std::int64_t>({3, 0, 40, 3, 7, 3, 12, 40, 5, 3, 9, 1, 40, 0, 33, 3, 28, 3, 17, 40, 2}, {3, 7});
  const Tensor<T> yd = dev(to(ids, gpu));
  const Tensor<R> yr = ref(ids);
  EXPECT_EQ(yd.shape(), (Shape{3, 7, 19}));
  expect_close(yd, yr, 0.0, "output");  // a lookup: exact
  backward_probe(yd, yr, 22);
  expect_gradients_match(dev, ref, kTol<T>);
}

template <class T, class R = T>
void check_rms_norm() {
  SCOPED_TRACE(str(dtype_of<T>));
  nn::RMSNorm<T> dev(53, 1e-5);
  nn::RMSNorm<R> ref(53, 1e-5);
  twin(dev, ref, 31, 0.7);
  const Tensor<T> x = draw<T>({4, 6, 53}, 32, 2.0);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const Tensor<T> yd = dev(xd);
  const Tensor<R> yr = ref(xr);
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 33);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

template <class T, class R = T>
void check_swiglu(bool bias) {
  SCOPED_TRACE(str(dtype_of<T>, bias ? " with bias" : " without bias"));
  Generator g{4, 0};
  nn::SwiGLUMLP<T> dev(24, 40, 0.1, g, bias);
  nn::SwiGLUMLP<R> ref(24, 40, 0.1, g, bias);
  twin(dev, ref, 41, 0.3);
  const Tensor<T> x = draw<T>({2, 7, 24}, 42);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const Tensor<T> yd = dev(xd);
  const Tensor<R> yr = ref(xr);
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 43);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

// nn::causal_attention: queries [2, 3, 5, 8] as the last 5 of 7 key positions, one key/value head
// broadcast over the 3 query heads, a non-contiguous value tensor.
template <class T, class R = T>
void check_causal_attention() {
  SCOPED_TRACE(str(dtype_of<T>));
  const double scale = 0.35;
  const Tensor<T> q = draw<T>({2, 3, 5, 8}, 51), k = draw<T>({2, 1, 7, 8}, 52), vt = draw<T>({2, 1, 6, 7}, 53);
  const Tensor<T> qd = leaf<T>(q, gpu), kd = leaf<T>(k, gpu), vd = leaf<T>(vt, gpu);
  const Tensor<R> qr = leaf<R>(q, Device::cpu()), kr = leaf<R>(k, Device::cpu()), vr = leaf<R>(vt, Device::cpu());
  const Tensor<T> yd = nn::causal_attention(qd, kd, transpose(vd, -1, -2), scale);
  const Tensor<R> yr = nn::causal_attention(qr, kr, transpose(vr, -1, -2), scale);
  EXPECT_EQ(yd.shape(), (Shape{2, 3, 5, 7 - 1}));
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 54);
  expect_grad_close(qd, qr, kTol<T>, "q");
  expect_grad_close(kd, kr, kTol<T>, "k");
  expect_grad_close(vd, vr, kTol<T>, "v");
}

// Grouped-query attention: 6 query heads over 2 key/value heads, head_dim 4, rope at positions 3..11.
nn::LlamaConfig llama_config(bool bias) {
  nn::LlamaConfig c;
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.attention_bias = c.mlp_bias = bias;
  c.rope_theta = 100.0;
  return c;
}

// head_dim 4 (6 heads of 24): the composed path on every device; head_dim 64 (hidden 128, 2 heads
// over 1 kv head) in bf16 on the GPU: the fused kernel, against the composed path on the CPU.
template <class T, class R = T>
void check_llama_attention(bool bias, std::int64_t hidden = 24, std::int64_t heads = 6, std::int64_t kv_heads = 2,
                           std::int64_t S = 9) {
  SCOPED_TRACE(str(dtype_of<T>, bias ? " with bias" : " without bias", " hidden ", hidden, " S ", S));
  nn::LlamaConfig c = llama_config(bias);
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  Generator g{6, 0};
  nn::LlamaAttention<T> dev(c, g);
  nn::LlamaAttention<R> ref(c, g);
  // Weights 0.3 at hidden 24, scaled by 1/sqrt(hidden) beyond: the same activation sizes, so the
  // scores stay O(1) (at 0.3 and hidden 128 they reach ~90 and the softmax is one-hot, where a
  // bf16 rounding of q or k moves the probabilities by percents on any device).
  twin(dev, ref, 61, 0.3 * std::sqrt(24.0 / static_cast<double>(hidden)));
  const bool fused = nn::use_fused_attention<T>(gpu, dev.head_dim, dev.head_dim);
  const Tensor<std::int64_t> positions = nn::positions_from(3, S);
  const Tensor<T> x = draw<T>({2, S, c.hidden_size}, 62);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  KernelTrace forward_trace;
  const Tensor<T> yd = dev.forward(xd, nn::rope_tables_on<T>(positions, dev.head_dim, c.rope_theta, gpu));
  EXPECT_EQ(forward_trace.count("attention_forward"), fused ? 1 : 0);
  const Tensor<R> yr = ref.forward(xr, nn::rope_tables_on<R>(positions, ref.head_dim, c.rope_theta, Device::cpu()));
  expect_close(yd, yr, kTol<T>, "output");
  KernelTrace backward_trace;
  backward_probe(yd, yr, 63);
  EXPECT_EQ(backward_trace.count("attention_backward"), fused ? 1 : 0);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

template <class T, class R = T>
void check_llama_decoder_layer(bool bias) {
  SCOPED_TRACE(str(dtype_of<T>, bias ? " with bias" : " without bias"));
  const nn::LlamaConfig c = llama_config(bias);
  Generator g{7, 0};
  nn::LlamaDecoderLayer<T> dev(c, g);
  nn::LlamaDecoderLayer<R> ref(c, g);
  twin(dev, ref, 71, 0.3);
  const std::int64_t S = 9;
  const Tensor<std::int64_t> positions = nn::positions_from(0, S);
  const std::int64_t d = c.resolved_head_dim();
  const Tensor<T> x = draw<T>({2, S, c.hidden_size}, 72);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const Tensor<T> yd = dev.forward(xd, nn::rope_tables_on<T>(positions, d, c.rope_theta, gpu));
  const Tensor<R> yr = ref.forward(xr, nn::rope_tables_on<R>(positions, d, c.rope_theta, Device::cpu()));
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 73);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

// MLA of odd sizes: 3 heads, nope 6, rope 4, v 5, kv_lora_rank 9, q_lora_rank 11 or a plain q_proj
// (then with attention biases), rope at positions 3..11.
nn::DeepseekV3Config mla_config(bool q_lora) {
  nn::DeepseekV3Config c;
  c.vocab_size = 37;
  c.hidden_size = 20;
  c.intermediate_size = 28;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 3;
  c.q_lora_rank = q_lora ? std::optional<std::int64_t>(11) : std::nullopt;
  c.kv_lora_rank = 9;
  c.qk_nope_head_dim = 6;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 5;
  c.attention_bias = !q_lora;
  c.rope_theta = 50.0;
  c.n_routed_experts = 0;  // dense MLPs: the decoder-layer and MTP cases do not route
  return c;
}

// MLA at the head dims of the fused kernel's smallest instance (qk 32 + 16, v 32): 2 heads.
nn::DeepseekV3Config mla_fused_config() {
  nn::DeepseekV3Config c = mla_config(true);
  c.hidden_size = 48;
  c.num_attention_heads = c.num_key_value_heads = 2;
  c.kv_lora_rank = 24;
  c.q_lora_rank = 16;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  return c;
}

// The naive path takes the fused kernel where nn::use_fused_attention says so (bf16 on the GPU at
// mla_fused_config's head dims), checked by the kernels' launches; the absorbed path composes.
template <class T, class R = T>
void check_mla(bool q_lora, const nn::DeepseekV3Config* config = nullptr, std::int64_t S = 9) {
  SCOPED_TRACE(str(dtype_of<T>, q_lora ? " with q_lora_rank" : " with q_proj", config ? " (fused head dims)" : "",
                   " S ", S));
  const nn::DeepseekV3Config c = config ? *config : mla_config(q_lora);
  Generator g{8, 0};
  nn::MLA<T> dev(c, g);
  nn::MLA<R> ref(c, g);
  twin(dev, ref, 81, 0.3);
  const bool fused = nn::use_fused_attention<T>(gpu, c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim);
  const Tensor<std::int64_t> positions = nn::positions_from(3, S);
  const Tensor<T> x = draw<T>({2, S, c.hidden_size}, 82);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  KernelTrace trace;
  const Tensor<T> yd = dev.forward(xd, positions);
  EXPECT_EQ(trace.count("attention_forward"), fused ? 1 : 0);
  const Tensor<R> yr = ref.forward(xr, positions);
  expect_close(yd, yr, kTol<T>, "naive output");
  const Tensor<T> ad = dev.forward_absorbed(xd, positions);
  const Tensor<R> ar = ref.forward_absorbed(xr, positions);
  expect_close(ad, ar, kTol<T>, "absorbed output");
  // Both paths in one objective: sum(y ⊙ r) + sum(a ⊙ r').
  const Tensor<T> r1 = draw<T>(yr.shape(), 83), r2 = draw<T>(yr.shape(), 84);
  add(sum(mul(yd, to(r1, gpu))), sum(mul(ad, to(r2, gpu)))).backward();
  EXPECT_EQ(trace.count("attention_backward"), fused ? 1 : 0);
  add(sum(mul(yr, cast<R>(r1))), sum(mul(ar, cast<R>(r2)))).backward();
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

// One packed row (sequence packing, nn/attention.hpp) through the naive path: on the GPU the
// fused kernel takes cu_seqlens where it runs (bf16, fused head dims), the composed path masks;
// against the CPU's composed path with the block-diagonal mask.
template <class T, class R = T>
void check_mla_packed(const nn::DeepseekV3Config& c, const std::vector<std::int64_t>& cu) {
  SCOPED_TRACE(str(dtype_of<T>, " packed, S ", cu.back()));
  Generator g{9, 0};
  nn::MLA<T> dev(c, g);
  nn::MLA<R> ref(c, g);
  twin(dev, ref, 91, 0.3);
  const bool fused = nn::use_fused_attention<T>(gpu, c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim);
  const std::int64_t S = cu.back();
  const auto cu_t = Tensor<std::int64_t>::from_vector(cu, {static_cast<std::int64_t>(cu.size())});
  const Tensor<std::int64_t> positions = nn::packed_positions(cu_t);
  const Tensor<T> x = draw<T>({1, S, c.hidden_size}, 92);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  KernelTrace trace;
  const Tensor<T> yd =
      dev.forward(xd, typename nn::MLA<T>::Tables{nn::rope_tables_on<T>(positions, c.qk_rope_head_dim, c.rope_theta, gpu), cu_t});
  EXPECT_EQ(trace.count("attention_forward"), fused ? 1 : 0);
  const Tensor<R> yr =
      ref.forward(xr, typename nn::MLA<R>::Tables{
                          nn::rope_tables_on<R>(positions, c.qk_rope_head_dim, c.rope_theta, Device::cpu()), cu_t});
  expect_close(yd, yr, kTol<T>, "packed output");
  const Tensor<T> r = draw<T>(yr.shape(), 93);
  sum(mul(yd, to(r, gpu))).backward();
  EXPECT_EQ(trace.count("attention_backward"), fused ? 1 : 0);
  sum(mul(yr, cast<R>(r))).backward();
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

// ---- MoE ------------------------------------------------------------------------------------------

// 6 routed experts in 3 groups, top-2 of the best 2 groups, 2 shared-expert units, the
// sequence-wise balance loss on. Hidden 10 and width 5 take the composed path on the GPU too;
// hidden 16 and width 8 (multiples of 8) the fused one in bf16 (nn::use_fused_moe).
nn::DeepseekV3Config moe_config(std::int64_t hidden = 10, std::int64_t width = 5) {
  nn::DeepseekV3Config c;
  c.hidden_size = hidden;
  c.moe_intermediate_size = width;
  c.n_routed_experts = 6;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 2;
  c.n_group = 3;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  c.seq_aux_loss_alpha = 0.05;
  return c;
}

// Tokens [B, S, hidden] (normal draws rounded to T) whose routing by `gate` has a margin of at
// least `delta` in every decision: a token that falls short is drawn again. In bf16 (round to
// nearest moves a value by at most 2^-8 of itself) a device's affinity logit z = x·g (|z| < 6
// here) is off by at most |z|·2^-8 < 0.024 after rounding, so the sigmoid (slope ≤ 1/4) by
// < 0.006, plus 0.004 for rounding s (< 1) and 0.005 for rounding s + bias (< 1.3): a choice score
// is within 0.015 of the exact one, a group score (a sum of two, rounded at < 2.6) within 0.04, a
// gap between two of either within 0.08. delta = 0.16 keeps both devices on the exact side of
// every boundary; float deviations are ~1e-6.
template <class T>
Tensor<T> well_separated_tokens(const nn::MoEGate<T>& gate, const nn::DeepseekV3Config& c, std::int64_t B,
                                std::int64_t S, double delta, std::uint64_t seed) {
  const Vec w = doubles(gate.weight), bias = doubles(gate.e_score_correction_bias);
  Generator gen{seed, 0};
  std::vector<T> values;
  for (std::int64_t n = 0; n < B * S; ++n) {
    int tries = 0;
    for (;; ++tries) {
      EXPECT_LT(tries, 1000) << "no token with routing margin " << delta;
      const Tensor<T> row = cast<T>(randn<float>({c.hidden_size}, 0.0, 1.0, Device::cpu(), gen));
      if (routing_margin(doubles(row).data(), w, bias, c) >= delta || tries >= 1000) {
        for (const T v : row.to_vector()) values.push_back(v);
        break;
      }
    }
  }
  return Tensor<T>::from_vector(values, {B, S, c.hidden_size});
}

template <class T, class R = T>
void check_moe(const nn::DeepseekV3Config& c = moe_config()) {
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " hidden " << c.hidden_size << " width "
                                    << c.moe_intermediate_size);
  EXPECT_EQ(nn::use_fused_moe<T>(gpu, c.hidden_size, c.moe_intermediate_size),
            (std::is_same_v<T, bf16> && c.hidden_size % 8 == 0 && c.moe_intermediate_size % 8 == 0));
  Generator g{9, 0};
  nn::MoE<T> dev(c, g);
  nn::MoE<R> ref(c, g);
  // Gate weights of std 0.5 spread the affinity logits (std ~1.6), so that most tokens route with a
  // clear margin; routing biases of std 0.1 take part in the choice (not in the gates).
  randomize_as(dev, 91, 0.3);
  dev.gate.weight = draw<T>(dev.gate.weight.shape(), 92, 0.5).requires_grad_();
  dev.gate.e_score_correction_bias = draw<T>({c.n_routed_experts}, 93, 0.1);
  const std::int64_t B = 2, S = 13, H = c.hidden_size;
  const Tensor<T> x = well_separated_tokens(dev.gate, c, B, S, 0.16, 94);
  mirror(dev, ref);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const nn::MoEOutput<T> od = dev.forward_full(xd);
  const nn::MoEOutput<R> orf = ref.forward_full(xr);

  // The same routing on both devices (each token's set of experts; the order of two chosen experts
  // of nearly equal score may differ, which changes nothing but summation order), and every expert
  // got tokens, so that every parameter has a gradient.
  EXPECT_EQ(dev.last_load().counts, ref.last_load().counts);
  for (std::size_t e = 0; e < ref.last_load().counts.size(); ++e)
    EXPECT_GT(ref.last_load().counts[e], 0) << "expert " << e << " got no token";
  {
    NoGradGuard no_grad;
    auto sets = [&](std::vector<std::int64_t> v) {
      for (std::size_t i = 0; i < v.size(); i += static_cast<std::size_t>(c.num_experts_per_tok))
        std::sort(v.begin() + static_cast<std::ptrdiff_t>(i),
                  v.begin() + static_cast<std::ptrdiff_t>(i + static_cast<std::size_t>(c.num_experts_per_tok)));
      return v;
    };
    const nn::Routing<T> rd = dev.gate(reshape(xd.detach(), {B * S, H}));
    const nn::Routing<R> rr = ref.gate(reshape(xr.detach(), {B * S, H}));
    EXPECT_EQ(rd.experts.device(), gpu);
    ASSERT_EQ(sets(rd.experts.to_vector()), sets(rr.experts.to_vector())) << "the devices routed differently";
    expect_close(rd.gates, rr.gates, kTol<T>, "gates");
  }

  expect_close(od.output, orf.output, kTol<T>, "output");
  expect_close(od.balance_loss, orf.balance_loss, kTol<T>, "balance loss");
  {
    // Dense dispatch (generation's decode path): every expert on every token, weighted by the
    // dense gates.
    NoGradGuard no_grad;
    expect_close(dev.forward_dense(xd.detach(), dev.stack_experts()), ref.forward_dense(xr.detach(), ref.stack_experts()),
                 kTol<T>, "dense dispatch output");
  }
  const Tensor<T> r = draw<T>(orf.output.shape(), 95);
  add(sum(mul(od.output, to(r, gpu))), od.balance_loss).backward();
  add(sum(mul(orf.output, cast<R>(r))), orf.balance_loss).backward();
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
  EXPECT_EQ(dev.gate.e_score_correction_bias.device(), gpu);
  EXPECT_FALSE(dev.gate.e_score_correction_bias.grad().defined());

  // The aux-loss-free update from the batch load (on the device for the GPU layer: its counts
  // never left it) gives the host rule's bits.
  EXPECT_EQ(dev.batch_load().counts, ref.batch_load().counts);
  dev.update_bias(1e-3);
  ref.update_bias(1e-3);
  EXPECT_EQ(doubles(dev.gate.e_score_correction_bias), doubles(ref.gate.e_score_correction_bias));
  EXPECT_EQ(dev.batch_load().total(), 0);
}

// A dense DeepSeek-V3 decoder layer: MLA (q_lora_rank) and the SwiGLU MLP with both norms.
template <class T, class R = T>
void check_deepseek_decoder_layer() {
  SCOPED_TRACE(str(dtype_of<T>));
  const nn::DeepseekV3Config c = mla_config(true);
  Generator g{10, 0};
  nn::DeepseekV3DecoderLayer<T> dev(c, 0, g);
  nn::DeepseekV3DecoderLayer<R> ref(c, 0, g);
  ASSERT_FALSE(dev.is_moe());
  twin(dev, ref, 101, 0.3);
  const std::int64_t S = 9;
  const Tensor<std::int64_t> positions = nn::positions_from(0, S);
  const Tensor<T> x = draw<T>({2, S, c.hidden_size}, 102);
  const Tensor<T> xd = leaf<T>(x, gpu);
  const Tensor<R> xr = leaf<R>(x, Device::cpu());
  const Tensor<T> yd = dev.forward(xd, positions);
  const Tensor<R> yr = ref.forward(xr, positions);
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 103);
  expect_grad_close(xd, xr, kTol<T>, "x");
  expect_gradients_match(dev, ref, kTol<T>);
}

// One MTP module (nn/mtp.hpp) around a dense block: enorm, hnorm, eh_proj, the block, and
// shared_head.norm applied to its output (as multi_token_prediction_loss does before the head).
template <class T, class R = T>
void check_mtp() {
  SCOPED_TRACE(str(dtype_of<T>));
  const nn::DeepseekV3Config c = mla_config(true);
  Generator g{11, 0};
  nn::DeepseekV3MTPLayer<T> dev(c, 2, g);
  nn::DeepseekV3MTPLayer<R> ref(c, 2, g);
  twin(dev, ref, 111, 0.3);
  const std::int64_t S = 8;
  const Tensor<T> previous = draw<T>({2, S, c.hidden_size}, 112), embedded = draw<T>({2, S, c.hidden_size}, 113);
  const Tensor<T> pd = leaf<T>(previous, gpu), ed = leaf<T>(embedded, gpu);
  const Tensor<R> pr = leaf<R>(previous, Device::cpu()), er = leaf<R>(embedded, Device::cpu());
  const Tensor<T> yd = dev.shared_head.norm(dev.forward_mtp(pd, ed).hidden);
  const Tensor<R> yr = ref.shared_head.norm(ref.forward_mtp(pr, er).hidden);
  expect_close(yd, yr, kTol<T>, "output");
  backward_probe(yd, yr, 114);
  expect_grad_close(pd, pr, kTol<T>, "previous hidden states");
  expect_grad_close(ed, er, kTol<T>, "embeddings");
  expect_gradients_match(dev, ref, kTol<T>);
}

}  // namespace

TEST(NnModulesCuda, Linear) {
  KILN_REQUIRE_GPU();
  for (bool bias : {true, false}) {
    check_linear<float>(bias);
    check_linear<bf16>(bias);
  }
}

TEST(NnModulesCuda, Embedding) {
  KILN_REQUIRE_GPU();
  check_embedding<float>();
  check_embedding<bf16>();
}

TEST(NnModulesCuda, RMSNorm) {
  KILN_REQUIRE_GPU();
  check_rms_norm<float>();
  check_rms_norm<bf16>();
}

TEST(NnModulesCuda, SwiGLUMLP) {
  KILN_REQUIRE_GPU();
  for (bool bias : {false, true}) {
    check_swiglu<float>(bias);
    check_swiglu<bf16>(bias);
  }
}

TEST(NnModulesCuda, CausalAttention) {
  KILN_REQUIRE_GPU();
  check_causal_attention<float>();
  check_causal_attention<bf16>();
}

TEST(NnModulesCuda, LlamaAttention) {
  KILN_REQUIRE_GPU();
  for (bool bias : {false, true}) {
    check_llama_attention<float>(bias);
    check_llama_attention<bf16>(bias);
  }
  // head_dim 64, S 70 (two query tiles): bf16 takes the fused kernel (against float on the CPU:
  // only the GPU's roundings count), float the composed path.
  check_llama_attention<bf16, float>(true, 128, 2, 1, 70);
  check_llama_attention<float>(false, 128, 2, 1, 70);
}

TEST(NnModulesCuda, LlamaDecoderLayer) {
  KILN_REQUIRE_GPU();
  for (bool bias : {false, true}) {
    check_llama_decoder_layer<float>(bias);
    check_llama_decoder_layer<bf16>(bias);
  }
}

TEST(NnModulesCuda, MLA) {
  KILN_REQUIRE_GPU();
  for (bool q_lora : {true, false}) {
    check_mla<float>(q_lora);
    check_mla<bf16>(q_lora);
  }
  const nn::DeepseekV3Config c = mla_fused_config();
  check_mla<bf16, float>(true, &c, 70);  // the fused kernel, against float on the CPU
  check_mla<float>(true, &c, 70);
  // Packed rows: sequences shorter than, equal to and longer than a 64-query tile, one token.
  const std::vector<std::int64_t> cu{0, 13, 14, 78, 150, 151};
  check_mla_packed<bf16, float>(c, cu);
  check_mla_packed<float>(c, cu);
}

TEST(NnModulesCuda, MoE) {
  KILN_REQUIRE_GPU();
  check_moe<float>();
  check_moe<bf16>();
  check_moe<bf16>(moe_config(16, 8));  // the fused path: routing kernel, device layout, grouped GEMMs
}

// The expert parallel code path on one rank (an exchange with itself, tests/support/
// loopback_exchange.hpp) on the GPU in bf16: the fused dispatch reads its layout's counts back for
// the exchange and runs the local experts' grouped GEMMs over offsets made on the host. Outputs,
// input and parameter gradients equal the local layer's bit for bit (the same kernels on the same
// rows), and the bias update moves the same bits.
TEST(NnModulesCuda, MoEExpertParallelPathOnOneRank) {
  KILN_REQUIRE_GPU();
  const nn::DeepseekV3Config c = moe_config(16, 8);
  ASSERT_TRUE(nn::use_fused_moe<bf16>(gpu, c.hidden_size, c.moe_intermediate_size));
  Generator g1{9, 0}, g2{9, 0};
  nn::MoE<bf16> local(c, g1);
  auto exchange = std::make_shared<LoopbackExchange<bf16>>(gpu);
  nn::MoE<bf16> spread(c, g2, exchange);
  local.to(gpu);
  spread.to(gpu);
  const Tensor<bf16> x = on_gpu(cast<bf16>(randn<float>({2, 13, c.hidden_size})));
  Tensor<bf16> y[2], dx[2];
  for (int k = 0; k < 2; ++k) {
    nn::MoE<bf16>& m = k == 0 ? local : spread;
    const Tensor<bf16> xl = x.detach().requires_grad_();
    y[k] = m(xl);
    sum(mul(y[k], y[k])).backward();
    dx[k] = xl.grad();
  }
  EXPECT_EQ(exchange->row_exchanges, 2);
  EXPECT_EQ(y[1].to_vector(), y[0].to_vector());
  EXPECT_EQ(dx[1].to_vector(), dx[0].to_vector());
  const auto mine = spread.named_parameters(), ref = local.named_parameters();
  ASSERT_EQ(mine.size(), ref.size());
  for (std::size_t p = 0; p < mine.size(); ++p) {
    ASSERT_TRUE(mine[p].second.grad().defined() && ref[p].second.grad().defined()) << mine[p].first;
    EXPECT_EQ(mine[p].second.grad().to_vector(), ref[p].second.grad().to_vector()) << mine[p].first;
  }
  spread.update_bias(0.01);
  local.update_bias(0.01);
  EXPECT_EQ(spread.gate.e_score_correction_bias.to_vector(), local.gate.e_score_correction_bias.to_vector());
}

TEST(NnModulesCuda, DeepseekV3DecoderLayer) {
  KILN_REQUIRE_GPU();
  check_deepseek_decoder_layer<float>();
  check_deepseek_decoder_layer<bf16>();
}

TEST(NnModulesCuda, MultiTokenPredictionLayer) {
  KILN_REQUIRE_GPU();
  check_mtp<float>();
  check_mtp<bf16>();
}
