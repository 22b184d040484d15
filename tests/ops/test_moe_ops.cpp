// The MoE ops (ops/moe.hpp) on the CPU: routing against hand-computed choices and gates, its gradient
// by finite differences, the layout against std::stable_sort, dispatch and combine against plain
// double loops and by finite differences, the balance update against the host rule, and the errors.
// The CUDA kernels are compared with these in tests/kernels/test_moe_cuda.cpp, and the fused MoE
// module with the composed one in tests/nn/test_moe.cpp.
#include <algorithm>
#include <numeric>

#include "kiln/autograd/gradcheck.hpp"
#include "kiln/nn/balance.hpp"
#include "kiln/ops/moe.hpp"
#include "test_util.hpp"

using namespace kiln;

namespace {

Tensor<double> tensor(const std::vector<double>& v, Shape shape) { return Tensor<double>::from_vector(v, shape); }

// Random affinities in (0, 1) with distinct values (no ties) for N tokens and E experts.
Tensor<double> random_scores(std::int64_t n, std::int64_t e, std::uint64_t seed) {
  Generator gen{seed, 0};
  return sigmoid(randn<double>({n, e}, 0.0, 1.0, Device::cpu(), gen));
}

}  // namespace

TEST(MoeRoute, HandComputedGroupLimitedChoice) {
  // 8 experts in 4 groups of 2, keep 2 groups, K = 3. Token 0's choice scores c = s + b:
  //   s = .9 .1 | .5 .6 | .8 .05 | .3 .7,  b = 0 0 | 0 0 | 0 0 | .3 0
  //   c = .9 .1 | .5 .6 | .8 .05 | .6 .7   group scores 1.0, 1.1, 0.85, 1.3: keep groups 3 and 1
  //   best c among experts 2, 3, 6, 7: 7 (.7), then 3 and 6 (both .6: the lower index first)
  // Gates from s: .7, .6, .3 over their sum 1.6, times 2.5.
  const Tensor<double> s = tensor({.9, .1, .5, .6, .8, .05, .3, .7}, {1, 8});
  const Tensor<double> b = tensor({0, 0, 0, 0, 0, 0, .3, 0}, {8});
  const MoeRoute<double> r = moe_route(s, b, {.top_k = 3, .n_group = 4, .topk_group = 2, .normalize = true, .scaling = 2.5});
  EXPECT_EQ(r.experts.to_vector(), (std::vector<std::int64_t>{7, 3, 6}));
  const std::vector<double> g = r.gates.to_vector();
  EXPECT_NEAR(g[0], .7 / 1.6 * 2.5, 1e-15);
  EXPECT_NEAR(g[1], .6 / 1.6 * 2.5, 1e-15);
  EXPECT_NEAR(g[2], .3 / 1.6 * 2.5, 1e-15);

  // No group limit, not normalised: the three largest c (.9, .8, .7), gates s · 2.5.
  const MoeRoute<double> all = moe_route(s, b, {.top_k = 3, .n_group = 1, .topk_group = 1, .normalize = false, .scaling = 2.5});
  EXPECT_EQ(all.experts.to_vector(), (std::vector<std::int64_t>{0, 4, 7}));
  EXPECT_NEAR(all.gates.to_vector()[1], .8 * 2.5, 1e-15);
}

// Dense rows: the hand-computed token above with two extra (shared) units, and a second token.
TEST(MoeRoute, DenseRowsHoldTheGatesZerosAndSharedOnes) {
  const Tensor<double> s = tensor({.9, .1, .5, .6, .8, .05, .3, .7, .2, .9, .1, .1, .3, .3, .4, .8}, {2, 8});
  const Tensor<double> b = tensor({0, 0, 0, 0, 0, 0, .3, 0}, {8});
  const MoeRouteOptions o{.top_k = 3, .n_group = 4, .topk_group = 2, .normalize = true, .scaling = 2.5};
  const std::vector<double> dense = moe_route_dense(s, b, o, 10).to_vector();
  ASSERT_EQ(dense.size(), 20u);
  const std::vector<double> row0{0, 0, 0, .6 / 1.6 * 2.5, 0, 0, .3 / 1.6 * 2.5, .7 / 1.6 * 2.5, 1, 1};
  for (std::size_t u = 0; u < 10; ++u) EXPECT_NEAR(dense[u], row0[u], 1e-15) << u;
  const MoeRoute<double> r = moe_route(s, b, o);  // token 1: the same gates, scattered
  std::vector<double> row1{0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
  for (std::size_t k = 0; k < 3; ++k)
    row1[static_cast<std::size_t>(r.experts.to_vector()[3 + k])] = r.gates.to_vector()[3 + k];
  EXPECT_EQ(std::vector<double>(dense.begin() + 10, dense.end()), row1);
  EXPECT_EQ(moe_route_dense(s, b, o, 8).shape(), (Shape{2, 8}));  // no shared units
  EXPECT_KILN_ERROR(moe_route_dense(s, b, o, 7), "moe_route_dense", "7 units", "8 experts");

  // From logits: the sigmoid formed inside gives the same rows as routing sigmoid(logits), bit for
  // bit (double and, rounded the same way, bf16); moe_route itself refuses logits.
  MoeRouteOptions from_logits = o;
  from_logits.logits = true;
  const Tensor<double> l = randn<double>({5, 8});
  EXPECT_EQ(moe_route_dense(l, b, from_logits, 9).to_vector(), moe_route_dense(sigmoid(l), b, o, 9).to_vector());
  const Tensor<bf16> lb = cast<bf16>(l), bb = cast<bf16>(b);
  EXPECT_EQ(moe_route_dense(lb, bb, from_logits, 9).to_vector(), moe_route_dense(sigmoid(lb), bb, o, 9).to_vector());
  EXPECT_KILN_ERROR((void)moe_route(l, b, from_logits), "moe_route", "logits");
}

TEST(MoeRoute, GradientMatchesFiniteDifferences) {
  const Tensor<double> b = tensor({.05, -.02, 0, .01, 0, 0, -.03, .02, 0, 0, 0, 0}, {12});
  for (const bool normalize : {true, false})
    for (const std::int64_t k : {1, 3}) {
      const MoeRouteOptions o{.top_k = k, .n_group = 3, .topk_group = 2, .normalize = normalize, .scaling = 1.7};
      const auto result = gradcheck(
          [&](const std::vector<Tensor<double>>& in) { return moe_route(in[0], b, o).gates; },
          {random_scores(7, 12, 3 + static_cast<std::uint64_t>(k))});
      EXPECT_TRUE(result.ok) << "normalize " << normalize << " K " << k << ": " << result.report;
    }
}

TEST(MoeRoute, ChecksItsArguments) {
  const Tensor<double> s = random_scores(2, 8, 1), b = zeros<double>({8});
  EXPECT_THROW(moe_route(s, zeros<double>({7}), {.top_k = 2}), Error);
  EXPECT_THROW(moe_route(s, b, {.top_k = 2, .n_group = 3, .topk_group = 1}), Error);  // 8 % 3
  EXPECT_THROW(moe_route(s, b, {.top_k = 5, .n_group = 4, .topk_group = 2}), Error);  // 4 experts kept
  EXPECT_THROW(moe_route(s, b, {.top_k = 0}), Error);
  EXPECT_THROW(moe_route(reshape(s, {16}), b, {.top_k = 1}), Error);
}

TEST(MoeLayout, EqualsAStableSortByExpert) {
  Generator gen{7, 0};
  for (const std::int64_t n : {1, 13, 200})
    for (const std::int64_t e : {1, 5, 64}) {
      const std::int64_t k = std::min<std::int64_t>(e, 3);
      // Expert ids skewed towards 0 and with some experts unused.
      std::vector<std::int64_t> ids;
      const std::vector<double> u = rand<double>({n * k}, 0.0, 1.0, Device::cpu(), gen).to_vector();
      for (double v : u) ids.push_back(static_cast<std::int64_t>(v * v * static_cast<double>(e)) % e);
      const MoeLayout l = moe_layout(Tensor<std::int64_t>::from_vector(ids, {n, k}), e);
      std::vector<std::int64_t> order(ids.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return ids[a] < ids[b]; });
      EXPECT_EQ(l.slot_of_row.to_vector(), order);
      const std::vector<std::int64_t> row = l.row_of_slot.to_vector(), off = l.offsets.to_vector(),
                                      counts = l.counts.to_vector();
      for (std::size_t p = 0; p < order.size(); ++p) EXPECT_EQ(row[static_cast<std::size_t>(order[p])], static_cast<std::int64_t>(p));
      ASSERT_EQ(off.size(), static_cast<std::size_t>(e + 1));
      EXPECT_EQ(off.front(), 0);
      EXPECT_EQ(off.back(), n * k);
      for (std::int64_t x = 0; x < e; ++x) {
        EXPECT_EQ(counts[static_cast<std::size_t>(x)], std::count(ids.begin(), ids.end(), x));
        for (std::int64_t p = off[static_cast<std::size_t>(x)]; p < off[static_cast<std::size_t>(x) + 1]; ++p)
          EXPECT_EQ(ids[static_cast<std::size_t>(order[static_cast<std::size_t>(p)])], x);
      }
    }
  // accumulate: the counts are added to it.
  const Tensor<std::int64_t> ids = Tensor<std::int64_t>::from_vector({2, 0, 2, 3}, {2, 2});
  const Tensor<std::int64_t> total = Tensor<std::int64_t>::from_vector({1, 1, 1, 1}, {4});
  (void)moe_layout(ids, 4, total);
  (void)moe_layout(ids, 4, total);
  EXPECT_EQ(total.to_vector(), (std::vector<std::int64_t>{3, 1, 5, 3}));
  EXPECT_THROW(moe_layout(ids, 4, zeros<std::int64_t>({3})), Error);
  EXPECT_THROW(moe_layout(Tensor<std::int64_t>::from_vector({0, 4}, {1, 2}), 4), Error);
  EXPECT_THROW(moe_layout(Tensor<std::int64_t>::from_vector({0, -1}, {1, 2}), 4), Error);
  EXPECT_THROW(moe_layout(Tensor<std::int64_t>::from_vector({0, 1}, {2}), 4), Error);
}

TEST(MoeDispatchCombine, ForwardEqualsPlainLoops) {
  const std::int64_t n = 9, k = 3, e = 5, h = 7;
  Generator gen{11, 0};
  std::vector<std::int64_t> ids;
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < k; ++j) ids.push_back((t * 2 + j * 3) % e);  // distinct per token
  const MoeLayout l = moe_layout(Tensor<std::int64_t>::from_vector(ids, {n, k}), e);
  const Tensor<double> x = randn<double>({n, h}, 0.0, 1.0, Device::cpu(), gen);
  const Tensor<double> rows = moe_dispatch(x, l);
  const std::vector<double> xv = x.to_vector(), rv = rows.to_vector();
  const std::vector<std::int64_t> slot = l.slot_of_row.to_vector();
  for (std::int64_t p = 0; p < n * k; ++p)
    for (std::int64_t j = 0; j < h; ++j)
      EXPECT_EQ(rv[static_cast<std::size_t>(p * h + j)], xv[static_cast<std::size_t>(slot[static_cast<std::size_t>(p)] / k * h + j)]);

  const Tensor<double> out = randn<double>({n * k, h}, 0.0, 1.0, Device::cpu(), gen);
  const Tensor<double> gates = rand<double>({n, k}, 0.0, 1.0, Device::cpu(), gen);
  const std::vector<double> y = moe_combine(out, gates, l).to_vector(), ov = out.to_vector(), gv = gates.to_vector();
  const std::vector<std::int64_t> row = l.row_of_slot.to_vector();
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < h; ++j) {
      double want = 0.0;
      for (std::int64_t c = 0; c < k; ++c)
        want += gv[static_cast<std::size_t>(t * k + c)] * ov[static_cast<std::size_t>(row[static_cast<std::size_t>(t * k + c)] * h + j)];
      EXPECT_NEAR(y[static_cast<std::size_t>(t * h + j)], want, 1e-14);
    }
}

TEST(MoeDispatchCombine, GradientsMatchFiniteDifferences) {
  const std::int64_t n = 6, k = 2, e = 4, h = 5;
  const std::vector<std::int64_t> ids{0, 3, 3, 1, 0, 1, 3, 0, 1, 0, 3, 1};  // expert 2 gets nothing
  const MoeLayout l = moe_layout(Tensor<std::int64_t>::from_vector(ids, {n, k}), e);
  Generator gen{5, 0};
  const Tensor<double> w_row = randn<double>({1, h}, 0.0, 1.0, Device::cpu(), gen);
  // y = combine(dispatch(x) ⊙ w_row, gates): every route's row depends on x, and the gates on themselves.
  const auto result = gradcheck(
      [&](const std::vector<Tensor<double>>& in) { return moe_combine(mul(moe_dispatch(in[0], l), w_row), in[1], l); },
      {randn<double>({n, h}, 0.0, 1.0, Device::cpu(), gen), rand<double>({n, k}, 0.0, 1.0, Device::cpu(), gen)});
  EXPECT_TRUE(result.ok) << result.report;
  // The residual form x + combine(...): x's gradient from the add arrives first and the dispatch's
  // backward starts its sum from it (autograd's InputGrads::received).
  const auto residual = gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        return add(in[0], moe_combine(mul(moe_dispatch(in[0], l), w_row), in[1], l));
      },
      {randn<double>({n, h}, 0.0, 1.0, Device::cpu(), gen), rand<double>({n, k}, 0.0, 1.0, Device::cpu(), gen)});
  EXPECT_TRUE(residual.ok) << residual.report;
  // A base the combine's sum starts from (the MoE's shared expert and residual): its value and
  // its gradient (the output's).
  const auto based = gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        return moe_combine(mul(moe_dispatch(in[0], l), w_row), in[1], l, in[2]);
      },
      {randn<double>({n, h}, 0.0, 1.0, Device::cpu(), gen), rand<double>({n, k}, 0.0, 1.0, Device::cpu(), gen),
       randn<double>({n, h}, 0.0, 1.0, Device::cpu(), gen)});
  EXPECT_TRUE(based.ok) << based.report;
  const auto rows = randn<double>({n * k, h}), gates = rand<double>({n, k}), base = randn<double>({n, h});
  EXPECT_LE(kiln::testing::relative_error(moe_combine(rows, gates, l, base), add(base, moe_combine(rows, gates, l))),
            1e-15);
  EXPECT_THROW(moe_combine(rows, gates, l, randn<double>({n, h + 1})), Error);
}

TEST(MoeDispatchCombine, ChecksItsArguments) {
  const MoeLayout l = moe_layout(Tensor<std::int64_t>::from_vector({0, 1, 1, 0}, {2, 2}), 2);
  EXPECT_THROW(moe_dispatch(zeros<double>({3, 4}), l), Error);
  EXPECT_THROW(moe_combine(zeros<double>({3, 4}), zeros<double>({2, 2}), l), Error);
  EXPECT_THROW(moe_combine(zeros<double>({4, 4}), zeros<double>({2, 1}), l), Error);
  EXPECT_THROW(moe_dispatch(zeros<double>({2, 4}), MoeLayout{}), Error);
}

TEST(MoeBalance, UpdateEqualsTheHostRule) {
  // counts mean 3: below, above, equal (sign 0), and a bias that rounds in bf16.
  const std::vector<std::int64_t> counts{1, 5, 3, 3};
  const Tensor<bf16> bias = Tensor<bf16>::from_vector({bf16(0.1f), bf16(-0.3f), bf16(0.0f), bf16(1.7f)}, {4});
  const Tensor<bf16> host = clone(bias);
  moe_balance_update(bias, Tensor<std::int64_t>::from_vector(counts, {4}), 0.001);
  nn::ExpertLoad load(4);
  load.counts = counts;
  nn::update_routing_bias(host, load, 0.001);
  EXPECT_EQ(bias.to_vector(), host.to_vector());
  EXPECT_NE(bias.to_vector()[0], bf16(0.1f));  // it moved
  // Nothing counted: nothing moves.
  const Tensor<double> b = tensor({1, 2}, {2});
  moe_balance_update(b, zeros<std::int64_t>({2}), 0.5);
  EXPECT_EQ(b.to_vector(), (std::vector<double>{1, 2}));
  EXPECT_THROW(moe_balance_update(b, zeros<std::int64_t>({3}), 0.5), Error);
}
