// The autograd engine: accumulation, graph freeing, NoGradGuard, detach, errors.
#include <memory>
#include <numeric>

#include "test_util.hpp"

using namespace kiln;

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  auto x = tensor<double>({1.0, 2.0, 3.0}).requires_grad_();
  sum(mul(x, x)).backward();
  sum(mul(x, x)).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{4.0, 8.0, 12.0}));  // 2 * 2x
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
  sum(x).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{1.0, 1.0, 1.0}));
}

TEST(Autograd, ReusedTensorGetsSumOfPaths) {
  // y = x*x + x: one node feeding two consumers must wait for both before passing gradient on.
  auto x = tensor<double>({0.5, -1.5}).requires_grad_();
  auto h = mul(x, 3.0);
  sum(add(mul(h, h), h)).backward();  // d/dx (9x^2 + 3x) = 18x + 3
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{12.0, -24.0}));
}

// A leaf's gradient is a tensor the leaf alone holds, so an optimizer may update it in place. It
// is taken without a copy when nothing else holds it, copied otherwise: add's backward hands one
// tensor to both leaves, cat's backward hands its inputs views of one gradient, and a gradient
// passed on from an output the caller kept (backward(g)) must stay the caller's.
TEST(Autograd, LeafGradientsShareNothing) {
  auto a = tensor<double>({1.0, 2.0}).requires_grad_(), b = tensor<double>({3.0, 4.0}).requires_grad_();
  sum(mul(add(a, b), tensor<double>({5.0, 6.0}))).backward();
  EXPECT_NE(a.grad().storage(), b.grad().storage());
  add_in_place(a.grad(), tensor<double>({1.0, 1.0}));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{6.0, 7.0}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{5.0, 6.0}));

  auto c = tensor<double>({1.0, 2.0, 3.0}).requires_grad_(), d = tensor<double>({4.0}).requires_grad_();
  const auto g = tensor<double>({7.0, 8.0, 9.0, 10.0});
  cat(std::vector<Tensor<double>>{c, d}, 0).backward(g);
  for (const auto* leaf : {&c, &d}) {
    EXPECT_NE(leaf->grad().storage(), g.storage());
    EXPECT_EQ(leaf->grad().offset(), 0);
    EXPECT_EQ(leaf->grad().storage()->nbytes(), static_cast<std::size_t>(leaf->numel()) * sizeof(double));
  }
  EXPECT_NE(c.grad().storage(), d.grad().storage());
  EXPECT_EQ(c.grad().to_vector(), (std::vector<double>{7.0, 8.0, 9.0}));
  EXPECT_EQ(d.grad().to_vector(), (std::vector<double>{10.0}));

  auto e = tensor<double>({1.0, 2.0}).requires_grad_();
  const auto ge = tensor<double>({3.0, 4.0});
  reshape(e, {2, 1}).backward(reshape(ge, {2, 1}));
  EXPECT_NE(e.grad().storage(), ge.storage());
  add_in_place(e.grad(), tensor<double>({1.0, 1.0}));
  EXPECT_EQ(ge.to_vector(), (std::vector<double>{3.0, 4.0}));
}

// The parts a joining op carves from a gradient nothing else holds become the leaves' gradients
// as they are: views of one tensor, disjoint, so an in-place update of one leaves the others as
// they were. (cat of leaves here; concat_as of the packed expert weights in an MoE layer.)
TEST(Autograd, LeafGradientsMayBeDisjointPartsOfOnePrivateGradient) {
  for (const bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "concat_as" : "cat");
    // Two leaves that lie back to back in one storage (as pack_experts lays out the experts).
    const auto block = tensor<double>({1.0, 2.0, 3.0, 4.0, 5.0, 6.0});
    auto c = Tensor<double>::view_of(block.storage(), 0, {2, 2}, {2, 1}).requires_grad_();
    auto d = Tensor<double>::view_of(block.storage(), 4, {1, 2}, {2, 1}).requires_grad_();
    const std::vector<Tensor<double>> parts{c, d};
    const auto joined = packed ? concat_as(parts, {3, 2}) : cat(parts, 0);
    // mul's backward makes the joined gradient: a fresh tensor only the joining node holds.
    sum(mul(joined, tensor<double>({7.0, 8.0, 9.0, 10.0, 11.0, 12.0}, {3, 2}))).backward();
    EXPECT_EQ(c.grad().to_vector(), (std::vector<double>{7.0, 8.0, 9.0, 10.0}));
    EXPECT_EQ(d.grad().to_vector(), (std::vector<double>{11.0, 12.0}));
    EXPECT_EQ(c.grad().storage(), d.grad().storage());  // no copies
    add_in_place(c.grad(), full<double>({2, 2}, 1.0));
    EXPECT_EQ(d.grad().to_vector(), (std::vector<double>{11.0, 12.0}));
    EXPECT_EQ(c.grad().to_vector(), (std::vector<double>{8.0, 9.0, 10.0, 11.0}));
  }
  // A joined gradient that another node holds too (add's backward hands one tensor to both of
  // its inputs) is not carved into kept parts: the leaves' gradients share nothing with e's.
  auto c = tensor<double>({1.0, 2.0}).requires_grad_(), d = tensor<double>({3.0}).requires_grad_();
  auto e = tensor<double>({0.5, 0.5, 0.5}).requires_grad_();
  sum(mul(add(cat(std::vector<Tensor<double>>{c, d}, 0), e), tensor<double>({1.0, 2.0, 3.0}))).backward();
  EXPECT_NE(c.grad().storage(), e.grad().storage());
  EXPECT_NE(d.grad().storage(), e.grad().storage());
  add_in_place(c.grad(), tensor<double>({1.0, 1.0}));
  EXPECT_EQ(e.grad().to_vector(), (std::vector<double>{1.0, 2.0, 3.0}));
  EXPECT_EQ(d.grad().to_vector(), (std::vector<double>{3.0}));
}

// An op whose backward writes its inputs' gradients where the inputs lie, in one fresh storage of
// their storage's size (what the CUDA attention op does: ops/attention.hpp), element i of that
// storage holding i + 1. b_elsewhere: b's gradient a tensor of its own instead; keep: the storage
// stays held after the backward (by *keep).
Tensor<double> op_writing_gradients_in_place(const Tensor<double>& a, const Tensor<double>& b, bool b_elsewhere,
                                             std::shared_ptr<Storage>* keep, const Storage** made) {
  Tensor<double> out = zeros<double>({1});
  const std::int64_t elements = static_cast<std::int64_t>(a.storage()->nbytes() / sizeof(double));
  autograd::record(
      out, "in_place_gradients",
      [a = a.detach(), b = b.detach(), elements, b_elsewhere, keep, made](const Tensor<double>&,
                                                                           const autograd::InputGrads& in) {
        std::vector<double> values(static_cast<std::size_t>(elements));
        std::iota(values.begin(), values.end(), 1.0);
        const Tensor<double> buffer = tensor<double>(values);
        *made = buffer.storage().get();
        if (keep) *keep = buffer.storage();
        const auto da = Tensor<double>::view_of(buffer.storage(), a.offset(), a.shape(), a.strides());
        const auto db = Tensor<double>::view_of(buffer.storage(), b.offset(), b.shape(), b.strides());
        in.add(0, da);
        in.add(1, b_elsewhere ? contiguous(db) : db);
      },
      a, b);
  return out;
}

// A same-type copy (clone, contiguous of a view) hands its gradient on as it is, without a copy:
// the node before it gets the very tensor (storage) the copy's gradient was, contiguous or
// strided, with the values of the view's inverse; a cast to another type makes a new tensor.
TEST(Autograd, CopiesPassTheirGradientOn) {
  auto x = randn<double>({3, 5}).requires_grad_();
  // h: x's values in a tensor of its own whose node notes the storage of the gradient it gets
  // (made anew for each backward, which frees the graph).
  const Storage* seen = nullptr;
  const auto probed = [&] {
    x.zero_grad();
    Tensor<double> h = clone(x.detach());
    autograd::record(h, "probe", [&seen](const Tensor<double>& g, const autograd::InputGrads& in) {
      seen = g.storage().get();
      in.add(0, g);
    }, x);
    return h;
  };
  const Tensor<double> g = randn<double>({3, 5});
  clone(probed()).backward(g);
  EXPECT_EQ(seen, g.storage().get());
  EXPECT_EQ(x.grad().to_vector(), g.to_vector());

  const Tensor<double> gt = randn<double>({5, 3});  // a strided gradient: gt's transpose
  clone(probed()).backward(transpose(gt, 0, 1));
  EXPECT_EQ(seen, gt.storage().get());
  EXPECT_EQ(x.grad().to_vector(), contiguous(transpose(gt, 0, 1)).to_vector());

  contiguous(transpose(probed(), 0, 1)).backward(gt);  // the transposed gradient reaches h's node
  EXPECT_EQ(seen, gt.storage().get());
  EXPECT_EQ(x.grad().to_vector(), contiguous(transpose(gt, 0, 1)).to_vector());

  const Tensor<float> gf = randn<float>({3, 5});
  cast<float>(probed()).backward(gf);
  EXPECT_NE(seen, gf.storage().get());
  EXPECT_EQ(x.grad().to_vector(), cast<double>(gf).to_vector());
}

// The gradients of a split's parts that already lie where the split's whole gradient would put
// them are that gradient: the node takes their storage as it is and copies only the parts made
// elsewhere into it (autograd node.hpp, in_place_gradient). A storage anything else still holds
// is not taken (the parts are copied, as always); the values are the same in every case.
TEST(Autograd, SplitGradientsAlreadyInPlaceAreTakenAsTheWhole) {
  struct Case {
    const char* name;
    bool b_elsewhere, keep, taken;
  };
  for (const Case& c : {Case{"both parts in place", false, false, true},
                        Case{"one part made elsewhere", true, false, true},
                        Case{"storage held elsewhere", false, true, false}}) {
    SCOPED_TRACE(c.name);
    auto x = randn<double>({2, 3, 5}).requires_grad_();
    // h: x's values in a tensor of its own, its node noting the storage of the gradient it gets.
    const Storage* seen = nullptr;
    Tensor<double> h = clone(x.detach());
    autograd::record(h, "probe", [&seen](const Tensor<double>& g, const autograd::InputGrads& in) {
      seen = g.storage().get();
      in.add(0, g);
    }, x);
    // Two column ranges of h seen head-major, as MLA hands its keys and values to attention.
    const std::vector<Tensor<double>> p = split(h, std::vector<std::int64_t>{2, 3}, -1);
    std::shared_ptr<Storage> kept;
    const Storage* made = nullptr;
    op_writing_gradients_in_place(transpose(p[0], 0, 1), transpose(p[1], 0, 1), c.b_elsewhere,
                                  c.keep ? &kept : nullptr, &made)
        .backward(ones<double>({1}));
    std::vector<double> expected(30);
    std::iota(expected.begin(), expected.end(), 1.0);
    EXPECT_EQ(x.grad().to_vector(), expected);
    EXPECT_EQ(seen == made, c.taken);
  }
}

// InputGrads::received / set_total: a backward sees the gradient its input has received so far
// when it is one contiguous tensor (to fold into its own, as rms_norm's and matmul's do), and
// nothing otherwise (none yet, or a strided one); the input's gradient is then the total it hands.
TEST(Autograd, BackwardMaySeeAndFoldTheGradientReceivedBefore) {
  for (const bool strided_first : {false, true}) {
    SCOPED_TRACE(strided_first ? "the first gradient strided" : "the first gradient contiguous");
    auto x = zeros<double>({2, 3}).requires_grad_();
    bool saw = false;
    // second: adds 10 to every element of x's gradient; its backward runs after first's, which
    // consumes its output.
    Tensor<double> second = zeros<double>({1});
    autograd::record(second, "second", [&saw](const Tensor<double>&, const autograd::InputGrads& in) {
      const Tensor<double> received = in.received<double>(0);
      saw = received.defined();
      if (saw) in.set_total(0, add(received, full<double>({2, 3}, 10.0)));
      else in.add(0, full<double>({2, 3}, 10.0));
    }, x);
    // first: hands x the gradient [[1, 2, 3], [4, 5, 6]] (or the same values as a transposed view).
    Tensor<double> first = zeros<double>({1});
    autograd::record(first, "first", [strided_first](const Tensor<double>& g, const autograd::InputGrads& in) {
      const auto values = tensor<double>({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, {2, 3});
      in.add(0, strided_first ? transpose(contiguous(transpose(values, 0, 1)), 0, 1) : values);
      in.add(1, g);
    }, x, second);
    first.backward(ones<double>({1}));
    EXPECT_EQ(saw, !strided_first);
    EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{11.0, 12.0, 13.0, 14.0, 15.0, 16.0}));
  }
}

TEST(Autograd, SecondBackwardThroughFreedGraphThrows) {
  auto x = tensor<double>({1.0, 2.0}).requires_grad_();
  auto loss = sum(mul(x, x));
  loss.backward();
  EXPECT_KILN_ERROR(loss.backward(), "already freed");
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  auto x = tensor<double>({1.0, 2.0}).requires_grad_();
  Tensor<double> y;
  {
    NoGradGuard guard;
    y = mul(x, x);
  }
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(mul(x, x).requires_grad());
}

TEST(Autograd, DetachCutsTheGraphButSharesData) {
  auto x = tensor<double>({1.0, 2.0}).requires_grad_();
  auto d = detach(mul(x, 2.0));
  EXPECT_FALSE(d.requires_grad());
  auto y = mul(x, 2.0);
  auto yd = y.detach();
  EXPECT_EQ(yd.data(), y.data());
}

TEST(Autograd, BackwardErrors) {
  auto x = tensor<double>({1.0, 2.0});
  EXPECT_KILN_ERROR(sum(x).backward(), "backward", "does not require grad");
  auto w = tensor<double>({1.0, 2.0}).requires_grad_();
  EXPECT_KILN_ERROR(mul(w, 2.0).backward(), "backward", "[2]", "one-element");
  EXPECT_KILN_ERROR(tensor<std::int64_t>({1, 2}).requires_grad_(), "requires_grad_", "int64");
}

TEST(Autograd, DeepChainDoesNotOverflowTheStack) {
  auto x = tensor<double>({1.0}).requires_grad_();
  Tensor<double> y = x;
  for (int i = 0; i < 200000; ++i) y = add(y, 1e-6);
  sum(y).backward();
  EXPECT_EQ(x.grad().item(), 1.0);
  // Dropping an un-backwarded deep graph must not overflow either.
  Tensor<double> z = x;
  for (int i = 0; i < 200000; ++i) z = mul(z, 1.0);
  z = Tensor<double>();
}

TEST(Autograd, GraphIsFreedAfterBackward) {
  auto x = tensor<double>({1.0, 2.0}).requires_grad_();
  auto big = randn<double>({1000});
  std::weak_ptr<Storage> saved;
  {
    auto y = mul(x, sum(big));  // the node saves the detached sum result
    saved = y.storage();
    auto loss = sum(y);
    loss.backward();
    y = Tensor<double>();
  }
  EXPECT_TRUE(saved.expired());
}

TEST(Autograd, MlpWithHandDerivedGradients) {
  // loss = mean((tanh(x W1) W2 - t)^2) with tiny fixed numbers; gradients derived by hand below.
  auto x = tensor<double>({1.0, -2.0}, {1, 2});
  auto w1 = tensor<double>({0.5, -0.25, 0.1, 0.3}, {2, 2}).requires_grad_();
  auto w2 = tensor<double>({1.5, -0.5}, {2, 1}).requires_grad_();
  // h_pre = x W1 = [0.5*1 + 0.1*(-2), -0.25*1 + 0.3*(-2)] = [0.3, -0.85]
  auto h_pre = add(mul(slice(x, 1, 0, 1), slice(w1, 0, 0, 1)), mul(slice(x, 1, 1, 2), slice(w1, 0, 1, 2)));
  auto h = tanh(h_pre);  // needs ops/unary.hpp
  auto out = add(mul(slice(h, 1, 0, 1), slice(w2, 0, 0, 1)), mul(slice(h, 1, 1, 2), slice(w2, 0, 1, 2)));
  auto loss = mean(pow(sub(out, 0.25), 2.0));
  loss.backward();
  const double h0 = std::tanh(0.3), h1 = std::tanh(-0.85);
  const double o = 1.5 * h0 - 0.5 * h1;
  const double dout = 2.0 * (o - 0.25);
  const double dh0 = dout * 1.5 * (1 - h0 * h0), dh1 = dout * -0.5 * (1 - h1 * h1);
  const std::vector<double> gw1{1.0 * dh0, 1.0 * dh1, -2.0 * dh0, -2.0 * dh1};
  const std::vector<double> gw2{dout * h0, dout * h1};
  auto g1 = w1.grad().to_vector(), g2 = w2.grad().to_vector();
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(g1[i], gw1[i], 1e-14);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(g2[i], gw2[i], 1e-14);
}

// gradcheck's sampling (max_elements_per_input): every ceil(numel / n)-th element, so two
// evaluations of f per sampled element plus one for the analytic gradient; a wrong derivative at a
// sampled element is still reported, and a wrong one elsewhere is (by design) not.
TEST(Autograd, GradcheckSamplesEvenlySpreadElements) {
  const auto x = randn<double>({10, 7});  // 70 elements; n = 8 checks elements 0, 9, ..., 63
  int calls = 0;
  GradcheckOptions o;
  o.max_elements_per_input = 8;
  auto square = [&](const std::vector<Tensor<double>>& in) {
    ++calls;
    return mul(in[0], in[0]);
  };
  EXPECT_GRADCHECK(square, {x}, o);
  EXPECT_EQ(calls, 1 + 2 * 8);
  // A function whose value at element 9 is off the graph (its gradient there is lost): found when
  // element 9 is sampled, missed when it is not.
  auto broken_at = [](std::int64_t flat) {
    return [flat](const std::vector<Tensor<double>>& in) {
      const Tensor<double> y = mul(in[0], in[0]);
      Tensor<double> off = zeros<double>(in[0].shape());
      off.data()[flat] = in[0].data()[flat];  // x[flat] as a constant: no gradient
      return add(y, off);
    };
  };
  EXPECT_FALSE(gradcheck(broken_at(9), {x}, o).ok);
  EXPECT_TRUE(gradcheck(broken_at(10), {x}, o).ok);
  o.max_elements_per_input = 0;  // every element
  EXPECT_FALSE(gradcheck(broken_at(10), {x}, o).ok);
}
