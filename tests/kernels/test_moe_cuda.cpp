// The MoE kernels (kernels/moe/) against the CPU ops (backend/cpu/moe.hpp, tested on their own in
// tests/ops/test_moe_ops.cpp): routing with and without group limits at top-1 to top-8 (bf16
// affinities tie often, so the tie rule is exercised), the layout at odd route counts, several
// radix tiles and passes, empty experts and one expert receiving everything, dispatch and combine
// forward and backward on the vector and the scalar paths, and the balance update bit for bit.
// Outputs are poisoned first, so an element a kernel leaves unwritten shows.
#include <cstring>

#include "cuda_test_util.hpp"
#include "kiln/nn/balance.hpp"
#include "kiln/ops/moe.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// Largest |a − b| / max(|b|, floor) over the elements: relative for values above the floor (the
// values here are of order 1), absolute below it, where a different order of float summation
// (or an FMA) leaves an absolute error of order 1e-7.
template <class T>
double max_relative(const Tensor<T>& a, const Tensor<T>& b, double floor = 1.0) {
  const std::vector<T> x = a.to_vector(), y = b.to_vector();
  double worst = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = std::abs(static_cast<double>(x[i]) - static_cast<double>(y[i]));
    worst = std::max(worst, d / std::max(std::abs(static_cast<double>(y[i])), floor));
  }
  return worst;
}

// One rounding of the compute type's result: 2^-8 relative for bf16, 2^-24 for float (plus a little
// for a different order of summation in float), 1e-14 for double.
template <class T>
double rounding() {
  if constexpr (std::is_same_v<T, bf16>) return 1.0 / 256.0;
  else if constexpr (std::is_same_v<T, float>) return 1e-6;
  else return 1e-14;
}

struct RouteCase {
  std::int64_t tokens, experts, top_k, n_group, topk_group;
  bool normalize;
};

template <class T>
void check_route(const RouteCase& c) {
  SCOPED_TRACE(::testing::Message() << "N " << c.tokens << " E " << c.experts << " K " << c.top_k << " groups "
                                    << c.topk_group << "/" << c.n_group << " normalize " << c.normalize);
  const Tensor<T> scores = cast<T>(sigmoid(randn<float>({c.tokens, c.experts})));
  const Tensor<T> bias = cast<T>(mul(randn<float>({c.experts}), 0.01));
  const MoeRouteOptions o{.top_k = c.top_k, .n_group = c.n_group, .topk_group = c.topk_group,
                          .normalize = c.normalize, .scaling = 2.5};
  const MoeRoute<T> want = moe_route(scores, bias, o);
  poison_cached_memory();
  const Tensor<T> gs = on_gpu(scores).requires_grad_();
  const MoeRoute<T> got = moe_route(gs, on_gpu(bias), o);
  EXPECT_EQ(on_cpu(got.experts).to_vector(), want.experts.to_vector());
  EXPECT_LE(max_relative(on_cpu(got.gates), want.gates), rounding<T>());
  // Dense rows (generation's dense dispatch) with three shared units: the same gates, zeros, ones.
  const Tensor<T> dense = moe_route_dense(gs, on_gpu(bias), o, c.experts + 3);
  EXPECT_EQ(dense.shape(), (Shape{c.tokens, c.experts + 3}));
  EXPECT_LE(max_relative(on_cpu(dense), moe_route_dense(scores, bias, o, c.experts + 3)), rounding<T>());
  // From logits (the sigmoid in the kernel): the GPU's sigmoid op then the routing, bit for bit.
  MoeRouteOptions from_logits = o;
  from_logits.logits = true;
  const Tensor<T> logits = on_gpu(cast<T>(randn<float>({c.tokens, c.experts})));
  EXPECT_EQ(on_cpu(moe_route_dense(logits, on_gpu(bias), from_logits, c.experts + 1)).to_vector(),
            on_cpu(moe_route_dense(sigmoid(logits), on_gpu(bias), o, c.experts + 1)).to_vector());

  // Backward: dscores from the same dgates (the choices agree, checked above).
  const Tensor<T> dgates = cast<T>(randn<float>({c.tokens, c.top_k}));
  const Tensor<T> cs = scores.detach().requires_grad_();
  moe_route(cs, bias, o).gates.backward(dgates);
  got.gates.backward(on_gpu(dgates));
  EXPECT_LE(max_relative(on_cpu(gs.grad()), cs.grad()), 4 * rounding<T>());
}

}  // namespace

TEST(MoeRouteCuda, EqualsTheCpu) {
  KILN_REQUIRE_GPU();
  const std::vector<RouteCase> cases{
      {1, 8, 2, 4, 2, true},      {7, 8, 2, 4, 2, true},     {1000, 8, 2, 4, 2, true},   // kiln's big config
      {333, 256, 8, 8, 4, true},  {65, 256, 8, 8, 4, false},                             // DeepSeek-V3
      {129, 64, 1, 1, 1, true},   {50, 16, 16, 1, 1, true},  {40, 1, 1, 1, 1, false},    // top-1, all, one expert
      {31, 96, 6, 12, 3, true},   {17, 1024, 8, 32, 8, true}};                           // odd groups; the maximum
  for (const RouteCase& c : cases) {
    check_route<float>(c);
    check_route<bf16>(c);
  }
  check_route<double>({45, 256, 8, 8, 4, true});
}

TEST(MoeLayoutCuda, EqualsTheCpu) {
  KILN_REQUIRE_GPU();
  Generator gen{3, 0};
  for (const std::int64_t n : {1, 7, 2500, 70001})
    for (const std::int64_t e : {1, 8, 256, 300}) {
      const std::int64_t k = std::min<std::int64_t>(e, 2);
      SCOPED_TRACE(::testing::Message() << "N " << n << " K " << k << " E " << e);
      // Skewed towards expert 0 (many experts empty at small N).
      const std::vector<double> u = rand<double>({n * k}, 0.0, 1.0, Device::cpu(), gen).to_vector();
      std::vector<std::int64_t> ids;
      for (const double v : u) ids.push_back(static_cast<std::int64_t>(v * v * v * static_cast<double>(e)) % e);
      if (n == 7) std::fill(ids.begin(), ids.end(), e - 1);  // one expert receives everything
      const Tensor<std::int64_t> experts = Tensor<std::int64_t>::from_vector(ids, {n, k});
      const MoeLayout want = moe_layout(experts, e);
      poison_cached_memory();
      const Tensor<std::int64_t> total = on_gpu(full<std::int64_t>({e}, 3));
      const MoeLayout got = moe_layout(on_gpu(experts), e, total);
      std::vector<std::int64_t> plus3 = want.counts.to_vector();
      for (auto& v : plus3) v += 3;
      EXPECT_EQ(on_cpu(total).to_vector(), plus3);
      EXPECT_EQ(on_cpu(got.slot_of_row).to_vector(), want.slot_of_row.to_vector());
      EXPECT_EQ(on_cpu(got.row_of_slot).to_vector(), want.row_of_slot.to_vector());
      EXPECT_EQ(on_cpu(got.offsets).to_vector(), want.offsets.to_vector());
      EXPECT_EQ(on_cpu(got.counts).to_vector(), want.counts.to_vector());
    }
}

namespace {

template <class T>
void check_dispatch_combine(std::int64_t n, std::int64_t k, std::int64_t e, std::int64_t h) {
  SCOPED_TRACE(::testing::Message() << "N " << n << " K " << k << " E " << e << " H " << h);
  std::vector<std::int64_t> ids;
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) ids.push_back((t * 7 + j * (e / k)) % e);
  const Tensor<std::int64_t> experts = Tensor<std::int64_t>::from_vector(ids, {n, k});
  const MoeLayout cl = moe_layout(experts, e), gl = moe_layout(on_gpu(experts), e);

  const Tensor<T> x = cast<T>(randn<float>({n, h}));
  const Tensor<T> expert_out = cast<T>(randn<float>({n * k, h}));
  const Tensor<T> gates = cast<T>(rand<float>({n, k}));
  const Tensor<T> dy = cast<T>(randn<float>({n, h}));
  const Tensor<T> drows = cast<T>(randn<float>({n * k, h}));

  const Tensor<T> cx = x.detach().requires_grad_(), co = expert_out.detach().requires_grad_(),
                  cg = gates.detach().requires_grad_();
  const Tensor<T> crows = moe_dispatch(cx, cl);
  const Tensor<T> cy = moe_combine(co, cg, cl);
  crows.backward(drows);
  cy.backward(dy);

  poison_cached_memory();
  const Tensor<T> gx = on_gpu(x).requires_grad_(), go = on_gpu(expert_out).requires_grad_(),
                  gg = on_gpu(gates).requires_grad_();
  const Tensor<T> grows = moe_dispatch(gx, gl);
  const Tensor<T> gy = moe_combine(go, gg, gl);
  grows.backward(on_gpu(drows));
  gy.backward(on_gpu(dy));

  EXPECT_EQ(max_relative(on_cpu(grows), crows), 0.0);  // a copy
  EXPECT_LE(max_relative(on_cpu(gy), cy), rounding<T>());
  EXPECT_LE(max_relative(on_cpu(gx.grad()), cx.grad()), rounding<T>());
  EXPECT_LE(max_relative(on_cpu(go.grad()), co.grad()), rounding<T>());
  // dgates are dot products of H terms of order 1 (so of order sqrt(H)), summed in another order:
  // one rounding of the result plus float summation error, against the scale sqrt(H).
  EXPECT_LE(max_relative(on_cpu(gg.grad()), cg.grad(), std::sqrt(static_cast<double>(h))),
            4 * rounding<T>() + 1e-6 * std::sqrt(static_cast<double>(h)));

  // Deterministic: the combine's backward twice gives the same bits.
  const Tensor<T> gg2 = on_gpu(gates).requires_grad_(), go2 = on_gpu(expert_out).requires_grad_();
  moe_combine(go2, gg2, gl).backward(on_gpu(dy));
  EXPECT_EQ(on_cpu(gg2.grad()).to_vector(), on_cpu(gg.grad()).to_vector());
  EXPECT_EQ(on_cpu(go2.grad()).to_vector(), on_cpu(go.grad()).to_vector());

  // The residual forms: the combine's sum started from a base (the MoE's shared expert and
  // residual), whose gradient is dy; and x + f(dispatch(x)), whose dispatch backward starts its
  // sum from the add's gradient (autograd's InputGrads::received).
  const Tensor<T> base = cast<T>(randn<float>({n, h}));
  const Tensor<T> cb = base.detach().requires_grad_(), gb = on_gpu(base).requires_grad_();
  const Tensor<T> cyb = moe_combine(co.detach(), cg.detach(), cl, cb);
  const Tensor<T> gyb = moe_combine(go.detach(), gg.detach(), gl, gb);
  EXPECT_LE(max_relative(on_cpu(gyb), cyb), rounding<T>());
  cyb.backward(dy);
  gyb.backward(on_gpu(dy));
  EXPECT_EQ(on_cpu(gb.grad()).to_vector(), cb.grad().to_vector());
  const Tensor<T> cx2 = x.detach().requires_grad_(), gx2 = on_gpu(x).requires_grad_();
  add(cx2, moe_combine(moe_dispatch(cx2, cl), cg.detach(), cl)).backward(dy);
  add(gx2, moe_combine(moe_dispatch(gx2, gl), gg.detach(), gl)).backward(on_gpu(dy));
  EXPECT_LE(max_relative(on_cpu(gx2.grad()), cx2.grad()), 2 * rounding<T>());
}

}  // namespace

TEST(MoeDispatchCombineCuda, EqualsTheCpu) {
  KILN_REQUIRE_GPU();
  for (const std::int64_t h : {7, 768, 1000}) {  // scalar path, 16-byte vectors, vectors of float only
    check_dispatch_combine<float>(1, 1, 4, h);
    check_dispatch_combine<float>(129, 2, 8, h);
    check_dispatch_combine<bf16>(129, 2, 8, h);
    check_dispatch_combine<bf16>(300, 8, 256, h);
  }
  check_dispatch_combine<double>(57, 3, 9, 64);
  // K <= 8 above: the token-order kernels (dispatch.cuh). K 12: the combine's backward in row
  // order (more routes than its registers keep); K 40: the dispatch in row order too (> 32 lanes).
  check_dispatch_combine<bf16>(37, 12, 24, 768);
  check_dispatch_combine<float>(5, 40, 40, 64);
}

TEST(MoeBalanceCuda, UpdateEqualsTheHostRuleBitForBit) {
  KILN_REQUIRE_GPU();
  for (const std::int64_t e : {1, 8, 256}) {
    std::vector<std::int64_t> counts;
    for (std::int64_t i = 0; i < e; ++i) counts.push_back((i * 37) % 11);  // some equal to the mean, some 0
    nn::ExpertLoad load(e);
    load.counts = counts;
    const Tensor<bf16> bias = cast<bf16>(mul(randn<float>({e}), 0.1));
    const Tensor<bf16> host = clone(bias);
    nn::update_routing_bias(host, load, 0.001);
    const Tensor<bf16> dev = on_gpu(bias);
    moe_balance_update(dev, on_gpu(Tensor<std::int64_t>::from_vector(counts, {e})), 0.001);
    const std::vector<bf16> a = on_cpu(dev).to_vector(), b = host.to_vector();
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)), 0) << "E " << e;

    const Tensor<float> fb = randn<float>({e}), fhost = clone(fb), fdev = on_gpu(fb);
    nn::update_routing_bias(fhost, load, 1e-3);
    moe_balance_update(fdev, on_gpu(Tensor<std::int64_t>::from_vector(counts, {e})), 1e-3);
    EXPECT_EQ(on_cpu(fdev).to_vector(), fhost.to_vector()) << "E " << e;
  }
}
