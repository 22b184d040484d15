// nn::Fp8Linear / nn::fp8_linear on the CPU: the forward and both gradients against float64
// products of the operands quantized as DeepSeek-V3 prescribes (x and dY in 1×128 tiles, W in
// 128×128 blocks, dYᵀ and xᵀ in 1×128 tiles along the tokens), written here from dequantized
// values; the module's parameters and errors; and a twin training run: a small MLP built from
// Fp8Linear tracks the loss curve of its FP32 twin (same initial weights, same batches).
#include <kiln/nn/fp8_linear.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/optim/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <vector>

#include "test_util.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace kiln;
using kiln::testing::relative_error;
using fp8::Tiling;

namespace {

// The values of `t` (any float/bf16 2-D tensor) after quantization with `tiling`, as doubles.
template <class T>
std::vector<double> quantized_values(const Tensor<T>& t, Tiling tiling) {
  const std::vector<float> v = fp8::dequantize(fp8::quantize(contiguous(t), tiling)).to_vector();
  return std::vector<double>(v.begin(), v.end());
}

// C [m, n] = A [m, k] · B [n, k]ᵀ in double (row-major vectors).
std::vector<double> abt(const std::vector<double>& a, const std::vector<double>& b, std::int64_t m, std::int64_t n,
                        std::int64_t k) {
  std::vector<double> c(static_cast<std::size_t>(m * n), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (std::int64_t p = 0; p < k; ++p) s += a[static_cast<std::size_t>(i * k + p)] * b[static_cast<std::size_t>(j * k + p)];
      c[static_cast<std::size_t>(i * n + j)] = s;
    }
  return c;
}

template <class A>
double tolerance() {
  return std::is_same_v<A, float> ? 1e-5 : 0x1p-8 + 1e-5;  // FP32 accumulation; bf16: one rounding (≤ 2^-8)
}

// Forward and backward of fp8_linear on x [2, tokens / 2, in] against the reference.
template <class A>
void check_gradients(std::int64_t tokens, std::int64_t in, std::int64_t out) {
  SCOPED_TRACE(str(dtype_of<A>, " tokens ", tokens, " in ", in, " out ", out));
  const Tensor<A> x = cast<A>(randn<float>({2, tokens / 2, in}, 0.0, 2.0)).detach().requires_grad_();
  const Tensor<float> w = randn<float>({out, in}, 0.0, 0.05).requires_grad_();
  const Tensor<A> r = cast<A>(randn<float>({2, tokens / 2, out}));  // dL/dy
  const Tensor<A> y = nn::fp8_linear(x, w);
  ASSERT_EQ(y.shape(), (Shape{2, tokens / 2, out}));
  sum(mul(y, r)).backward();

  const Tensor<A> x2 = reshape(x.detach(), {tokens, in}), g2 = reshape(r, {tokens, out});
  // Forward: x in 1×128 tiles along in, W in 128×128 blocks.
  const std::vector<double> qx = quantized_values(x2, Tiling::row_1x128);
  const std::vector<double> qw = quantized_values(w.detach(), Tiling::block_128x128);
  EXPECT_LE(relative_error(y.to_vector(), abt(qx, qw, tokens, out, in)), tolerance<A>());

  // dX = dY · W: dY in 1×128 tiles along out; W in 128×128 blocks (the same blocks as Wᵀ's).
  const std::vector<double> qg = quantized_values(g2, Tiling::row_1x128);
  std::vector<double> qwt(qw.size());
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t i = 0; i < in; ++i) qwt[static_cast<std::size_t>(i * out + o)] = qw[static_cast<std::size_t>(o * in + i)];
  ASSERT_TRUE(x.grad().defined());
  ASSERT_EQ(x.grad().shape(), x.shape());
  EXPECT_LE(relative_error(x.grad().to_vector(), abt(qg, qwt, tokens, in, out)), tolerance<A>());

  // dW = dYᵀ · x: both quantized in 1×128 tiles along the tokens.
  const std::vector<double> qgt = quantized_values(transpose(g2, 0, 1), Tiling::row_1x128);
  const std::vector<double> qxt = quantized_values(transpose(x2, 0, 1), Tiling::row_1x128);
  ASSERT_TRUE(w.grad().defined());
  ASSERT_EQ(w.grad().shape(), w.shape());
  EXPECT_LE(relative_error(w.grad().to_vector(), abt(qgt, qxt, out, in, tokens)), 1e-5);  // FP32 output

  // And all three approximate the unquantized products (FP8 keeps ~2-3%).
  const Tensor<float> xf = cast<float>(x2), gf = cast<float>(g2), wf = w.detach();
  EXPECT_LT(relative_error(cast<float>(reshape(y.detach(), {tokens, out})), matmul(xf, transpose(wf, 0, 1))), 0.08);
  EXPECT_LT(relative_error(cast<float>(reshape(x.grad(), {tokens, in})), matmul(gf, wf)), 0.08);
  EXPECT_LT(relative_error(w.grad(), matmul(transpose(gf, 0, 1), xf)), 0.08);
}

}  // namespace

TEST(Fp8Linear, GradientsMatchQuantizedReferenceFloat) {
  check_gradients<float>(10, 200, 70);
  check_gradients<float>(2, 7, 3);
  check_gradients<float>(300, 130, 257);
}

TEST(Fp8Linear, GradientsMatchQuantizedReferenceBf16) {
  check_gradients<bf16>(10, 200, 70);
  check_gradients<bf16>(260, 129, 140);
}

TEST(Fp8Linear, OnlyTheNeededGradients) {
  const Tensor<float> x = randn<float>({5, 40}).requires_grad_();
  const Tensor<float> w = randn<float>({6, 40});  // frozen
  sum(nn::fp8_linear(x, w)).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(w.grad().defined());
  const Tensor<float> x2 = randn<float>({5, 40});
  const Tensor<float> w2 = randn<float>({6, 40}).requires_grad_();
  sum(nn::fp8_linear(x2, w2)).backward();
  EXPECT_TRUE(w2.grad().defined());
  EXPECT_FALSE(nn::fp8_linear(x2, randn<float>({6, 40})).requires_grad());
}

TEST(Fp8Linear, Module) {
  Generator gen{5, 0};
  nn::Fp8Linear<float> layer(40, 24, 0.02, gen);
  const auto params = layer.named_parameters("proj");
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0].first, "proj.weight");
  EXPECT_EQ(params[0].second.shape(), (Shape{24, 40}));
  EXPECT_TRUE(params[0].second.requires_grad());
  EXPECT_EQ(layer(randn<float>({40})).shape(), (Shape{24}));
  EXPECT_EQ(layer(randn<float>({2, 3, 40})).shape(), (Shape{2, 3, 24}));
  EXPECT_EQ(layer(cast<bf16>(randn<float>({3, 40}))).shape(), (Shape{3, 24}));
  const Tensor<float> empty = layer(randn<float>({0, 40}));
  EXPECT_EQ(empty.shape(), (Shape{0, 24}));
  EXPECT_KILN_ERROR(layer(randn<float>({3, 41})), "fp8_linear", "[3, 41]", "[24, 40]");
  EXPECT_KILN_ERROR(nn::fp8_linear(randn<float>({3, 40}), randn<float>({40})), "fp8_linear", "[40]");
  EXPECT_KILN_ERROR(nn::Fp8Linear<float>(0, 3, 0.02, gen), "Fp8Linear");
}

namespace {

// A two-layer MLP classifier, x [B, 128] -> 256 -> 16 classes, with FP8 or FP32 linear layers.
struct Mlp {
  Tensor<float> w1, w2;
  bool fp8;

  Tensor<float> logits(const Tensor<float>& x) const {
    const Tensor<float> h = fp8 ? relu(nn::fp8_linear(x, w1)) : relu(nn::linear(x, w1));
    return fp8 ? nn::fp8_linear(h, w2) : nn::linear(h, w2);
  }
};

// Labels drawn from softmax(teacher · x): like next-token targets, they carry irreducible entropy
// (about 1 nat here), so the loss curve flattens at a level set by the data, not at zero.
Tensor<std::int64_t> sample_labels(const Tensor<float>& x, const Tensor<float>& teacher, Generator& gen) {
  const std::int64_t n = x.size(0), classes = teacher.size(0);
  const std::vector<float> logits = matmul(x, transpose(teacher, 0, 1)).to_vector();
  const std::vector<float> u = rand<float>({n}, 0.0, 1.0, Device::cpu(), gen).to_vector();
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n), classes - 1);
  for (std::int64_t b = 0; b < n; ++b) {
    const float* z = logits.data() + b * classes;
    const double top = *std::max_element(z, z + classes);
    double total = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) total += std::exp(z[c] - top);
    double cumulative = 0.0;
    for (std::int64_t c = 0; c < classes; ++c) {
      cumulative += std::exp(z[c] - top) / total;
      if (u[static_cast<std::size_t>(b)] < cumulative) {
        labels[static_cast<std::size_t>(b)] = c;
        break;
      }
    }
  }
  return Tensor<std::int64_t>::from_vector(labels, {n});
}

// Runs the enclosing scope on one OpenMP thread. The twin run opens ~7000 small parallel regions;
// on a busy machine each costs milliseconds of waiting for a descheduled worker (2.5 s on one
// thread, up to a minute on two). Results do not depend on the thread count (kiln's chunking is
// fixed; test_fp8_gemm checks the FP8 kernels for it).
struct SingleThread {
#ifdef _OPENMP
  int saved = omp_get_max_threads();
  SingleThread() { omp_set_num_threads(1); }
  ~SingleThread() { omp_set_num_threads(saved); }
#endif
};

}  // namespace

TEST(Fp8Linear, TwinTrainingTracksFp32) {
  // Both students start from the same weights and see the same batches and learning rates (AdamW,
  // warmup then cosine decay). The loss curve of the FP8 one, as plotted (means over 10 steps),
  // must stay within 1% of the FP32 one, and so must the loss on held-out data at the end.
  // Under the sanitizers (test_util.hpp) ten steps exercise the same code; at -O0 the 300 took
  // 224 s there, and the curves are compared in the Release pass.
  constexpr std::int64_t batch = 256, in = 128, hidden = 256, classes = 16, window = 10;
  constexpr std::int64_t steps = kiln::testing::kSanitized ? 10 : 300;
  const SingleThread single_thread;
  Generator gen{2024, 0};
  const Tensor<float> teacher = randn<float>({classes, in}, 0.0, 0.3, Device::cpu(), gen);
  const Tensor<float> w1 = randn<float>({hidden, in}, 0.0, 0.08, Device::cpu(), gen);
  const Tensor<float> w2 = randn<float>({classes, hidden}, 0.0, 0.06, Device::cpu(), gen);
  Mlp twins[2] = {{clone(w1).requires_grad_(), clone(w2).requires_grad_(), false},
                  {clone(w1).requires_grad_(), clone(w2).requires_grad_(), true}};
  optim::AdamWOptions opt;
  opt.weight_decay = 0.0;
  optim::AdamW<float> adam[2] = {optim::AdamW<float>({twins[0].w1, twins[0].w2}, opt),
                                 optim::AdamW<float>({twins[1].w1, twins[1].w2}, opt)};
  optim::CosineSchedule schedule;
  schedule.peak_lr = 2e-3;
  schedule.min_lr = 2e-4;
  schedule.warmup_steps = 20;
  schedule.total_steps = steps;

  std::vector<double> losses[2];
  for (std::int64_t step = 0; step < steps; ++step) {
    // Uniform inputs with unit variance.
    const Tensor<float> x = rand<float>({batch, in}, -1.7320508, 1.7320508, Device::cpu(), gen);
    const Tensor<std::int64_t> targets = sample_labels(x, teacher, gen);
    for (int t = 0; t < 2; ++t) {
      const Tensor<float> loss = cross_entropy(twins[t].logits(x), targets);
      losses[t].push_back(static_cast<double>(loss.item()));
      loss.backward();
      adam[t].set_lr(schedule(step));
      adam[t].step();
      adam[t].zero_grad();
    }
  }
  if (kiln::testing::kSanitized) return;
  const std::vector<double>&l32 = losses[0], &l8 = losses[1];
  EXPECT_LT(l32.back(), 0.5 * l32.front());  // it learned something, so tracking means something

  double worst = 0.0, worst_step_gap = 0.0;
  std::int64_t worst_window = 0;
  for (std::int64_t w = 0; w < steps / window; ++w) {
    double a = 0.0, b = 0.0;
    for (std::int64_t s = w * window; s < (w + 1) * window; ++s) {
      a += l32[static_cast<std::size_t>(s)];
      b += l8[static_cast<std::size_t>(s)];
      worst_step_gap = std::max(worst_step_gap, std::fabs(l8[static_cast<std::size_t>(s)] - l32[static_cast<std::size_t>(s)]) /
                                                    l32[static_cast<std::size_t>(s)]);
    }
    if (std::fabs(b - a) / a > worst) {
      worst = std::fabs(b - a) / a;
      worst_window = w;
    }
  }
  EXPECT_LE(worst, 0.01) << "steps " << worst_window * window << " to " << (worst_window + 1) * window - 1;

  NoGradGuard no_grad;
  const Tensor<float> x_eval = rand<float>({2048, in}, -1.7320508, 1.7320508, Device::cpu(), gen);
  const Tensor<std::int64_t> t_eval = sample_labels(x_eval, teacher, gen);
  const double e32 = cross_entropy(twins[0].logits(x_eval), t_eval).item();
  const double e8 = cross_entropy(twins[1].logits(x_eval), t_eval).item();
  EXPECT_LE(std::fabs(e8 - e32) / e32, 0.01) << "held-out loss: fp8 " << e8 << ", fp32 " << e32;
  std::printf("twin training: fp32 loss %.4f -> %.4f, fp8 %.4f -> %.4f; worst gap of %lld-step means %.3f%%, of single "
              "steps %.3f%%; held-out loss fp32 %.4f, fp8 %.4f (%.3f%%)\n",
              l32.front(), l32.back(), l8.front(), l8.back(), static_cast<long long>(window), 100.0 * worst,
              100.0 * worst_step_gap, e32, e8, 100.0 * std::fabs(e8 - e32) / e32);
}

// grouped_fp8_linear against the per-group layers it stands for: group g's rows through
// fp8_linear(x_g, W_g) give the same output and data gradient bit for bit (a 1×128 tile lies in
// one row, so quantizing all rows at once tiles each group's rows alike; each W_g gets its own
// blocks), and the weight gradient is the unquantized dY_gᵀ·x_g of grouped_linear, bit for bit.
// Odd group sizes, an empty group, K not a multiple of 128. With grouped_fp8_wgrad the weight
// gradient is FP8's too: bit for bit fp8_linear's weight gradient of each group's rows alone (the
// k-grouped layout tiles each expert's tokens from its own first row), the rest unchanged.
template <class T>
void check_grouped(const std::vector<std::int64_t>& sizes, std::int64_t in, std::int64_t out) {
  SCOPED_TRACE(str(dtype_of<T>, " in ", in, " out ", out));
  const auto G = static_cast<std::int64_t>(sizes.size());
  std::vector<std::int64_t> offsets{0};
  for (const std::int64_t s : sizes) offsets.push_back(offsets.back() + s);
  const std::int64_t R = offsets.back();
  const Tensor<std::int64_t> off = Tensor<std::int64_t>::from_vector(offsets, {G + 1});
  const Tensor<T> x = cast<T>(randn<float>({R, in}, 0.0, 2.0)).detach().requires_grad_();
  const Tensor<T> w = cast<T>(randn<float>({G, out, in}, 0.0, 0.05)).detach().requires_grad_();
  const Tensor<T> dy = cast<T>(randn<float>({R, out}));
  const Tensor<T> y = nn::grouped_fp8_linear(x, w, off);
  ASSERT_EQ(y.shape(), (Shape{R, out}));
  sum(mul(y, dy)).backward();

  const Tensor<T> w2 = w.detach().requires_grad_(), x2 = x.detach().requires_grad_();
  sum(mul(grouped_linear(x2, w2, off), dy)).backward();
  EXPECT_EQ(w.grad().to_vector(), w2.grad().to_vector()) << "weight gradient";

  nn::Fp8LinearOptions recipe;
  recipe.grouped_fp8_wgrad = true;
  const Tensor<T> x3 = x.detach().requires_grad_(), w3 = w.detach().requires_grad_();
  const Tensor<T> y3 = nn::grouped_fp8_linear(x3, w3, off, recipe);
  sum(mul(y3, dy)).backward();
  EXPECT_EQ(y3.to_vector(), y.to_vector());
  EXPECT_EQ(x3.grad().to_vector(), x.grad().to_vector());
  EXPECT_NE(w3.grad().to_vector(), w.grad().to_vector()) << "the FP8 weight gradient differs from the plain one";

  for (std::int64_t g = 0; g < G; ++g) {
    const std::int64_t n = sizes[static_cast<std::size_t>(g)];
    const Tensor<T> w3g = squeeze(narrow(w3.grad(), 0, g, 1), 0);
    if (n == 0) {
      EXPECT_EQ(w3g.to_vector(), zeros<T>(w3g.shape()).to_vector()) << "empty group " << g;
      continue;
    }
    const Tensor<T> xg = clone(narrow(x.detach(), 0, offsets[static_cast<std::size_t>(g)], n)).requires_grad_();
    const Tensor<T> wg = clone(squeeze(narrow(w.detach(), 0, g, 1), 0)).requires_grad_();
    const Tensor<T> yg = nn::fp8_linear(xg, wg);
    sum(mul(yg, narrow(dy, 0, offsets[static_cast<std::size_t>(g)], n))).backward();
    EXPECT_EQ(narrow(y.detach(), 0, offsets[static_cast<std::size_t>(g)], n).to_vector(), yg.to_vector()) << "group " << g;
    EXPECT_EQ(narrow(x.grad(), 0, offsets[static_cast<std::size_t>(g)], n).to_vector(), xg.grad().to_vector())
        << "group " << g;
    EXPECT_EQ(w3g.to_vector(), wg.grad().to_vector()) << "FP8 weight gradient, group " << g;
  }
}

// Fp8LinearOptions' per-product switches: each product is, bit for bit, either the FP8 one of the
// default options or the plain one of an unquantized linear (matmul in the activations' dtype),
// whatever the other two do; and the grouped form likewise against grouped_linear.
template <class A, class W>
void check_switches() {
  SCOPED_TRACE(str(dtype_of<A>, " activations, ", dtype_of<W>, " weights"));
  const Tensor<A> x = cast<A>(randn<float>({3, 45, 200}, 0.0, 2.0));
  const Tensor<W> w = cast<W>(randn<float>({72, 200}, 0.0, 0.05));
  const Tensor<A> dy = cast<A>(randn<float>({3, 45, 72}));
  struct Products {
    std::vector<A> y, dx;
    std::vector<W> dw;
  };
  auto run = [&](const nn::Fp8LinearOptions& o) {
    const Tensor<A> xi = x.detach().requires_grad_();
    const Tensor<W> wi = w.detach().requires_grad_();
    const Tensor<A> y = nn::fp8_linear(xi, wi, o);
    sum(mul(y, dy)).backward();
    return Products{y.to_vector(), xi.grad().to_vector(), wi.grad().to_vector()};
  };
  const Products fp8 = run(nn::Fp8LinearOptions{});
  // The unquantized products: matmuls in A, FP32 accumulation, dW converted to W's dtype.
  const Tensor<A> x2 = reshape(x, {135, 200}), g2 = reshape(dy, {135, 72}), wa = cast<A>(w);
  const Products plain{matmul(x2, transpose(wa, 0, 1)).to_vector(), matmul(g2, wa).to_vector(),
                       cast<W>(matmul(transpose(g2, 0, 1), x2)).to_vector()};
  for (int mask = 0; mask < 8; ++mask) {
    nn::Fp8LinearOptions o;
    o.fp8_forward = (mask & 1) != 0;
    o.fp8_dgrad = (mask & 2) != 0;
    o.fp8_wgrad = (mask & 4) != 0;
    const Products got = run(o);
    EXPECT_EQ(got.y, o.fp8_forward ? fp8.y : plain.y) << "forward, switches " << mask;
    EXPECT_EQ(got.dx, o.fp8_dgrad ? fp8.dx : plain.dx) << "data gradient, switches " << mask;
    EXPECT_EQ(got.dw, o.fp8_wgrad ? fp8.dw : plain.dw) << "weight gradient, switches " << mask;
  }
  EXPECT_NE(fp8.y, plain.y);  // the two sides differ, so each comparison says which one ran
  EXPECT_NE(fp8.dx, plain.dx);
  EXPECT_NE(fp8.dw, plain.dw);
}

template <class T>
void check_grouped_switches() {
  SCOPED_TRACE(dtype_of<T>);
  const Tensor<std::int64_t> off = Tensor<std::int64_t>::from_vector({0, 3, 3, 133, 140}, {5});
  const Tensor<T> x = cast<T>(randn<float>({140, 200}, 0.0, 2.0)), dy = cast<T>(randn<float>({140, 72}));
  const Tensor<T> w = cast<T>(randn<float>({4, 72, 200}, 0.0, 0.05));
  auto run = [&](const nn::Fp8LinearOptions* o) {
    const Tensor<T> xi = x.detach().requires_grad_(), wi = w.detach().requires_grad_();
    const Tensor<T> y = o ? nn::grouped_fp8_linear(xi, wi, off, *o) : grouped_linear(xi, wi, off);
    sum(mul(y, dy)).backward();
    return std::vector<std::vector<T>>{y.to_vector(), xi.grad().to_vector(), wi.grad().to_vector()};
  };
  const nn::Fp8LinearOptions all{};
  const auto fp8 = run(&all), plain = run(nullptr);
  for (int mask = 0; mask < 4; ++mask) {
    nn::Fp8LinearOptions o;
    o.fp8_forward = (mask & 1) != 0;
    o.fp8_dgrad = (mask & 2) != 0;
    const auto got = run(&o);
    EXPECT_EQ(got[0], o.fp8_forward ? fp8[0] : plain[0]) << "forward, switches " << mask;
    EXPECT_EQ(got[1], o.fp8_dgrad ? fp8[1] : plain[1]) << "data gradient, switches " << mask;
    EXPECT_EQ(got[2], plain[2]) << "weight gradient (unquantized in the grouped form), switches " << mask;
  }
  // grouped_fp8_wgrad quantizes the weight gradient only together with fp8_wgrad.
  nn::Fp8LinearOptions only_grouped;
  only_grouped.fp8_wgrad = false;
  only_grouped.grouped_fp8_wgrad = true;
  EXPECT_EQ(run(&only_grouped)[2], plain[2]);
  nn::Fp8LinearOptions recipe;
  recipe.grouped_fp8_wgrad = true;
  EXPECT_NE(run(&recipe)[2], plain[2]);
  EXPECT_NE(fp8[0], plain[0]);
  EXPECT_NE(fp8[1], plain[1]);
}

TEST(Fp8Linear, EachProductCanStayUnquantized) {
  check_switches<float, float>();
  check_switches<bf16, bf16>();
  check_switches<bf16, float>();
  check_grouped_switches<float>();
  check_grouped_switches<bf16>();
}

TEST(Fp8Linear, GroupedEqualsPerGroupLayers) {
  check_grouped<float>({3, 0, 130, 1, 7}, 200, 72);
  check_grouped<bf16>({5, 129, 0, 2}, 256, 40);
  check_grouped<float>({4}, 64, 16);
  EXPECT_KILN_ERROR(nn::grouped_fp8_linear(randn<float>({5, 8}), randn<float>({2, 4, 8}),
                                           Tensor<std::int64_t>::from_vector({0, 2, 4}, {3})),
                    "grouped_fp8_linear", "offsets", "5");
  EXPECT_KILN_ERROR(nn::grouped_fp8_linear(randn<float>({5, 8}), randn<float>({2, 4, 9}),
                                           Tensor<std::int64_t>::from_vector({0, 2, 5}, {3})),
                    "grouped_fp8_linear", "[2, 4, 9]");
}
