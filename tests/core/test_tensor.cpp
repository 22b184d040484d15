// Tensor basics: factories, views (shared storage, strides), casts, printing, RNG determinism.
#include <sstream>

#include "test_util.hpp"

using namespace kiln;

TEST(Tensor, FactoriesFillEveryElement) {
  EXPECT_EQ(zeros<float>({2, 3}).to_vector(), std::vector<float>(6, 0.0f));
  EXPECT_EQ(ones<double>({4}).to_vector(), std::vector<double>(4, 1.0));
  EXPECT_EQ(full<std::int64_t>({2, 2}, 7).to_vector(), std::vector<std::int64_t>(4, 7));
  EXPECT_EQ(arange<double>(0, 5).to_vector(), (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_EQ(arange<double>(1, 2, 0.25).to_vector(), (std::vector<double>{1, 1.25, 1.5, 1.75}));
  EXPECT_EQ(arange<double>(3, 0, -1).to_vector(), (std::vector<double>{3, 2, 1}));
  EXPECT_EQ(zeros<float>({0, 5}).numel(), 0);
  auto s = full<double>({}, 2.5);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item(), 2.5);
  EXPECT_KILN_ERROR(zeros<float>({2, -1}), "negative dimension", "[2, -1]");
  EXPECT_KILN_ERROR(tensor<float>({1, 2, 3}, {2, 2}), "from_vector", "[2, 2]", "3 values");
}

TEST(Tensor, RandomIsCounterBasedAndThreadCountIndependent) {
  Generator g1{42, 0}, g2{42, 0};
  auto a = randn<double>({1000}, 0.0, 1.0, Device::cpu(), g1);
  // Drawing the same counters in two pieces gives the same numbers: element i = f(seed, i).
  auto b1 = randn<double>({400}, 0.0, 1.0, Device::cpu(), g2);
  auto b2 = randn<double>({600}, 0.0, 1.0, Device::cpu(), g2);
  auto av = a.to_vector(), v1 = b1.to_vector(), v2 = b2.to_vector();
  for (int i = 0; i < 400; ++i) ASSERT_EQ(av[i], v1[i]);
  for (int i = 0; i < 600; ++i) ASSERT_EQ(av[400 + i], v2[i]);
  // Moments of a large sample.
  Generator g3{7, 0};
  auto big = randn<double>({200000}, 0.0, 1.0, Device::cpu(), g3).to_vector();
  double m = 0, m2 = 0;
  for (double x : big) m += x, m2 += x * x;
  m /= big.size();
  m2 /= big.size();
  EXPECT_NEAR(m, 0.0, 0.01);
  EXPECT_NEAR(m2, 1.0, 0.01);
  Generator g4{7, 0};
  auto u = rand<double>({200000}, -1.0, 3.0, Device::cpu(), g4).to_vector();
  double um = 0, lo = 10, hi = -10;
  for (double x : u) um += x, lo = std::min(lo, x), hi = std::max(hi, x);
  EXPECT_NEAR(um / u.size(), 1.0, 0.01);
  EXPECT_GE(lo, -1.0);
  EXPECT_LT(hi, 3.0);
  // Different seeds differ; manual_seed resets the default stream.
  manual_seed(5);
  auto x1 = randn<float>({8}).to_vector();
  manual_seed(5);
  EXPECT_EQ(randn<float>({8}).to_vector(), x1);
  EXPECT_NE(randn<float>({8}).to_vector(), x1);
}

TEST(Tensor, PhiloxMatchesPublishedKnownAnswer) {
  // Known-answer test from the Random123 distribution (kat_vectors): philox4x32_10 with counter
  // and key all 0xffffffff... here the all-zero case: ctr = {0,0,0,0}, key = {0,0}
  // -> {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}.
  auto out = philox::block({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(out[0], 0x6627e8d5u);
  EXPECT_EQ(out[1], 0xe169c58du);
  EXPECT_EQ(out[2], 0xbc57ac4cu);
  EXPECT_EQ(out[3], 0x9b00dbd8u);
}

TEST(Views, ShareStorageAndComputeStrides) {
  auto x = arange<float>(0, 24);
  auto r = reshape(x, {2, 3, 4});
  EXPECT_EQ(r.storage(), x.storage());
  EXPECT_EQ(r.strides(), (Strides{12, 4, 1}));
  auto t = transpose(r, 0, 2);  // [4, 3, 2]
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.strides(), (Strides{1, 4, 12}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.at({3, 2, 1}), 12 + 8 + 3);
  auto p = permute(r, {1, 2, 0});
  EXPECT_EQ(p.shape(), (Shape{3, 4, 2}));
  EXPECT_EQ(p.at({2, 1, 1}), 12 + 8 + 1);
  // view of a transposed tensor merging dims that are contiguous together works without a copy...
  auto v = view(permute(r, {0, 2, 1}), {2, 4, 3});
  EXPECT_EQ(v.storage(), x.storage());
  // ...while one that needs a copy throws, and reshape copies instead.
  EXPECT_KILN_ERROR(view(t, {24}), "view", "[4, 3, 2]", "reshape");
  auto flat = reshape(t, {-1});
  EXPECT_NE(flat.storage(), x.storage());
  EXPECT_EQ(flat.at({1}), 12.0f);
  EXPECT_KILN_ERROR(reshape(x, {5, -1}), "reshape", "[24]", "[5, -1]");
  EXPECT_KILN_ERROR(reshape(x, {-1, -1}), "only one dimension");
  // slices
  auto s = slice(r, 2, 1, 4, 2);  // columns 1 and 3
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(s.at({1, 2, 1}), 12 + 8 + 3);
  EXPECT_EQ(slice(r, 1, -2, 3).shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(narrow(r, 1, 1, 2).at({0, 0, 0}), 4.0f);
  EXPECT_KILN_ERROR(narrow(r, 1, 2, 2), "narrow", "[2, 3, 4]");
  // expand, squeeze, unsqueeze
  auto col = reshape(arange<float>(0, 3), {3, 1});
  auto e = expand(col, {2, 3, 5});
  EXPECT_EQ(e.strides(), (Strides{0, 1, 0}));
  EXPECT_EQ(e.at({1, 2, 4}), 2.0f);
  EXPECT_KILN_ERROR(expand(col, {2, 2}), "expand", "[3, 1]", "[2, 2]");
  EXPECT_EQ(unsqueeze(col, 0).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(unsqueeze(col, -1).shape(), (Shape{3, 1, 1}));
  EXPECT_EQ(squeeze(col, 1).shape(), (Shape{3}));
  EXPECT_EQ(squeeze(unsqueeze(col, 0)).shape(), (Shape{3}));
  EXPECT_KILN_ERROR(squeeze(col, 0), "squeeze", "[3, 1]", "not 1");
  EXPECT_KILN_ERROR(transpose(col, 0, 2), "transpose", "dim 2");
  EXPECT_KILN_ERROR(permute(r, {0, 0, 1}), "permute", "repeated");
}

TEST(Views, ContiguousAndCloneCopyNonContiguousData) {
  auto x = randn<double>({5, 7});
  auto t = transpose(x, 0, 1);
  auto c = contiguous(t);
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), t.to_vector());
  EXPECT_EQ(contiguous(x).data(), x.data());
  auto k = clone(x);
  EXPECT_NE(k.data(), x.data());
  EXPECT_EQ(k.to_vector(), x.to_vector());
}

TEST(Views, GradientsFlowThroughEveryView) {
  using V = std::vector<Tensor<double>>;
  auto x = randn<double>({3, 4, 5});
  EXPECT_GRADCHECK([](const V& a) { return mul(reshape(a[0], {12, 5}), 2.0); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(transpose(a[0], 0, 2), transpose(a[0], 0, 2)); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(permute(a[0], {2, 0, 1}), 3.0); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(slice(a[0], 2, 1, 5, 2), slice(a[0], 2, 0, 4, 2)); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(narrow(a[0], 1, 1, 2), 1.5); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(expand(a[0], {2, 3, 4, 5}), 1.0); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mul(expand(a[0], {3, 4, 5}), a[1]); },
                   {randn<double>({3, 1, 5}), randn<double>({3, 4, 5})});
  EXPECT_GRADCHECK([](const V& a) { return mul(unsqueeze(squeeze(a[0], 1), 0), 1.0); }, {randn<double>({3, 1, 2})});
  EXPECT_GRADCHECK([](const V& a) { return mul(contiguous(a[0]), a[0]); }, {transpose(randn<double>({4, 3}), 0, 1).detach()});
  EXPECT_GRADCHECK([](const V& a) { return mul(flatten(a[0]), 2.0); }, {transpose(randn<double>({4, 3}), 0, 1).detach()});
}

TEST(Cast, RoundsLikeTheScalarTypesAndIsDifferentiable) {
  auto x = randn<float>({257}, 0.0, 100.0);
  auto xv = x.to_vector();
  auto b = cast<bf16>(x).to_vector();
  auto h = cast<fp16>(x).to_vector();
  auto e = cast<fp8_e4m3>(x).to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    ASSERT_EQ(b[i].bits, bf16(xv[i]).bits);
    ASSERT_EQ(h[i].bits, fp16(xv[i]).bits);
    ASSERT_EQ(e[i].bits, fp8_e4m3(xv[i]).bits);
  }
  auto back = cast<double>(cast<bf16>(x)).to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) ASSERT_EQ(back[i], static_cast<double>(static_cast<float>(b[i])));
  EXPECT_EQ(cast<std::int64_t>(tensor<double>({1.7, -2.2})).to_vector(), (std::vector<std::int64_t>{1, -2}));
  // Differentiable: d cast(x) / dx = 1, the gradient cast back.
  using V = std::vector<Tensor<double>>;
  EXPECT_GRADCHECK([](const V& a) { return cast<double>(mul(cast<float>(a[0]), 1.0)); }, {randn<double>({3, 5})},
                   GradcheckOptions{1e-3, 1e-4, 1e-3});
  auto w = randn<double>({4}).requires_grad_();
  sum(cast<float>(w)).backward();
  EXPECT_EQ(w.grad().to_vector(), std::vector<double>(4, 1.0));
}

TEST(Binary, BroadcastingMatchesReference) {
  auto a = randn<double>({4, 1, 3});
  auto b = randn<double>({5, 1});
  auto c = add(a, b);
  ASSERT_EQ(c.shape(), (Shape{4, 5, 3}));
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 5; ++j)
      for (int k = 0; k < 3; ++k) {
        ASSERT_EQ(c.at({i, j, k}), a.at({i, 0, k}) + b.at({j, 0}));
        ASSERT_EQ(mul(a, b).at({i, j, k}), a.at({i, 0, k}) * b.at({j, 0}));
        ASSERT_EQ(sub(a, b).at({i, j, k}), a.at({i, 0, k}) - b.at({j, 0}));
        ASSERT_EQ(div(a, b).at({i, j, k}), a.at({i, 0, k}) / b.at({j, 0}));
      }
  auto t = transpose(randn<float>({33, 7}), 0, 1);  // non-contiguous
  auto u = randn<float>({7, 33});
  auto s = add(t, u);
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 33; ++j) ASSERT_EQ(s.at({i, j}), t.at({i, j}) + u.at({i, j}));
  auto big = randn<float>({1000 + 3, 129});
  auto row = randn<float>({129});
  auto bv = big.to_vector(), rv = row.to_vector(), ov = mul(big, row).to_vector();
  for (std::size_t i = 0; i < bv.size(); ++i) ASSERT_EQ(ov[i], bv[i] * rv[i % 129]);
  EXPECT_EQ((2.0 - tensor<double>({1.0})).item(), 1.0);
  EXPECT_EQ((3.0 / tensor<double>({2.0})).item(), 1.5);
  EXPECT_EQ(pow(tensor<double>({3.0}), 2.0).item(), 9.0);
  EXPECT_EQ(maximum(tensor<double>({1, 5}), tensor<double>({3, 2})).to_vector(), (std::vector<double>{3, 5}));
  EXPECT_TRUE(std::isnan(maximum(tensor<double>({NAN}), tensor<double>({1.0})).item()));
}

TEST(Binary, Gradients) {
  using V = std::vector<Tensor<double>>;
  const V same{randn<double>({3, 5}), randn<double>({3, 5})};
  const V bcast{randn<double>({2, 1, 5}), randn<double>({4, 1})};
  const V noncontig{transpose(randn<double>({5, 3}), 0, 1).detach(), randn<double>({5})};
  for (const V& in : {same, bcast, noncontig}) {
    EXPECT_GRADCHECK([](const V& a) { return add(a[0], a[1]); }, in);
    EXPECT_GRADCHECK([](const V& a) { return sub(a[0], a[1]); }, in);
    EXPECT_GRADCHECK([](const V& a) { return mul(a[0], a[1]); }, in);
    EXPECT_GRADCHECK([](const V& a) { return maximum(a[0], a[1]); }, in);
    EXPECT_GRADCHECK([](const V& a) { return minimum(a[0], a[1]); }, in);
  }
  auto pos = [](Shape s) { return add(rand<double>(s), 0.5); };
  EXPECT_GRADCHECK([](const V& a) { return div(a[0], a[1]); }, {randn<double>({3, 5}), pos({5})});
  EXPECT_GRADCHECK([](const V& a) { return pow(a[0], a[1]); }, {pos({3, 5}), randn<double>({3, 1})});
  EXPECT_GRADCHECK([](const V& a) { return pow(a[0], 3.0); }, {randn<double>({7})});
  EXPECT_GRADCHECK([](const V& a) { return 1.0 / a[0] - a[0] * 2.0 + 1.0; }, {pos({6})});
}

TEST(Binary, ErrorsNameOpAndShapes) {
  EXPECT_KILN_ERROR(add(zeros<float>({2, 3}), zeros<float>({4})), "kiln::add", "[2, 3]", "[4]");
  EXPECT_KILN_ERROR(mul(zeros<float>({2, 3}), zeros<float>({3, 2})), "kiln::mul", "[2, 3]", "[3, 2]");
  EXPECT_KILN_ERROR(add(Tensor<float>(), zeros<float>({1})), "add", "undefined");
}

TEST(Reduce, SumMeanMatchReference) {
  auto x = randn<double>({3, 4, 5});
  auto s = sum(x, {0, 2});
  ASSERT_EQ(s.shape(), (Shape{4}));
  for (int j = 0; j < 4; ++j) {
    double ref = 0;
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 5; ++k) ref += x.at({i, j, k});
    EXPECT_NEAR(s.at({j}), ref, 1e-12);
  }
  EXPECT_EQ(mean(x, {-1}, true).shape(), (Shape{3, 4, 1}));
  using V = std::vector<Tensor<double>>;
  EXPECT_GRADCHECK([](const V& a) { return sum(a[0], {1}); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return mean(a[0], {0, 2}, true); }, {x});
  EXPECT_GRADCHECK([](const V& a) { return sum(a[0]); }, {transpose(randn<double>({4, 3}), 0, 1).detach()});
  EXPECT_EQ(sum(full<double>({}, 4.0), {0}).item(), 4.0);  // a 0-d tensor reduces to itself
  EXPECT_EQ(mean(full<double>({}, 4.0), {-1}).item(), 4.0);
  EXPECT_KILN_ERROR(sum(x, {3}), "sum", "dim 3");
  EXPECT_KILN_ERROR(sum(x, {1, -2}), "sum", "twice");
}

TEST(Printing, IsReadable) {
  std::ostringstream os;
  os << tensor<float>({1, -2.5, 3, 4}, {2, 2});
  EXPECT_EQ(os.str(), "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]], dtype=float32, device=cpu)");
  std::ostringstream big;
  big << zeros<float>({50, 50});
  EXPECT_NE(big.str().find("..."), std::string::npos);
  EXPECT_LT(big.str().size(), 1000u);
  std::ostringstream g;
  g << tensor<double>({1.0}).requires_grad_();
  EXPECT_NE(g.str().find("requires_grad=true"), std::string::npos);
}

// Sizes from corrupt or hostile inputs (issue 13: a config with vocab 2^62 reached these) are
// refused before anything is allocated, instead of wrapping to a small count and writing past it.
TEST(TensorSizes, OverflowingAndOversizedShapesAreRefused) {
  const std::int64_t huge = std::int64_t{1} << 62;
  // {2^62 + 1, 4} has 2^64 + 4 elements: int64 wraps it to 4.
  EXPECT_KILN_ERROR((void)Tensor<float>({huge + 1, 4}), "shape", "more elements than an int64");
  EXPECT_KILN_ERROR(numel_of({huge, 2, 2}), "shape");
  // 2^62 floats fit in int64 but not in bytes: refused by the size limit.
  EXPECT_KILN_ERROR(zeros<float>({huge}), "Tensor", "bytes one tensor may take");
  EXPECT_KILN_ERROR(randn<float>({huge, 1}), "Tensor");
  // A view may be that large (no storage of its own); what it would allocate may not.
  const Tensor<float> wide = expand(zeros<float>({1}), {huge});
  EXPECT_EQ(wide.numel(), huge);
  EXPECT_KILN_ERROR(add(wide, 1.0), "Tensor");
  EXPECT_KILN_ERROR((void)Tensor<float>({-3, 2}), "negative dimension");
  // A zero dimension makes the count 0, whatever the others.
  EXPECT_EQ(numel_of({0, huge, huge}), 0);
  EXPECT_EQ(Tensor<float>({huge, 0}).numel(), 0);
  // Ordinary shapes are untouched; the limit sits at 2^48 bytes.
  EXPECT_EQ(numel_of({3, 5, 7}), 105);
  EXPECT_EQ(numel_of({}), 1);
  EXPECT_EQ(allocatable_numel("t", {std::int64_t{1} << 46}, 4), std::int64_t{1} << 46);
  EXPECT_KILN_ERROR(allocatable_numel("t", {(std::int64_t{1} << 46) + 1}, 4), "t");
}
