// Comparisons and masks (compare.hpp, where.hpp), indexing along a dim (gather.hpp), embedding
// and topk: forward against plain index loops, broadcast and non-contiguous inputs, gradients
// (gradcheck in double, repeated indices included), determinism, and error messages.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "test_util.hpp"

using namespace kiln;

namespace {

std::vector<std::int64_t> unravel(std::int64_t flat, const Shape& shape) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

std::int64_t ravel(const std::vector<std::int64_t>& idx, const Shape& shape) {
  std::int64_t flat = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + idx[d];
  return flat;
}

// Row-major position, in a tensor of `shape`, of the element that broadcasts to out index `idx`.
std::size_t broadcast_at(const std::vector<std::int64_t>& idx, const Shape& shape) {
  const std::size_t lead = idx.size() - shape.size();
  std::int64_t flat = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + (shape[d] == 1 ? 0 : idx[lead + d]);
  return static_cast<std::size_t>(flat);
}

Shape broadcast3(const Shape& a, const Shape& b, const Shape& c) {
  return broadcast_shapes("test", broadcast_shapes("test", a, b), c);
}

// A random mask, true with probability p.
Tensor<bool> random_mask(const Shape& shape, double p = 0.5) { return lt(rand<double>(shape), p); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// compare.hpp

TEST(Compare, TensorTensorBroadcastMatchesReference) {
  // Small integers make ties common, so equal pairs exercise eq/le/ge.
  const auto a = randint<double>(-2, 3, {4, 1, 5});
  const auto b = transpose(randint<double>(-2, 3, {1, 3}), 0, 1);  // [3, 1], non-contiguous
  const Shape out_shape{4, 3, 5};
  const auto av = a.to_vector(), bv = b.to_vector();
  struct Case {
    const char* name;
    std::function<Tensor<bool>(const Tensor<double>&, const Tensor<double>&)> op;
    std::function<bool(double, double)> ref;
  };
  const std::vector<Case> cases{
      {"eq", [](auto& x, auto& y) { return eq(x, y); }, std::equal_to<double>{}},
      {"ne", [](auto& x, auto& y) { return ne(x, y); }, std::not_equal_to<double>{}},
      {"lt", [](auto& x, auto& y) { return lt(x, y); }, std::less<double>{}},
      {"le", [](auto& x, auto& y) { return le(x, y); }, std::less_equal<double>{}},
      {"gt", [](auto& x, auto& y) { return gt(x, y); }, std::greater<double>{}},
      {"ge", [](auto& x, auto& y) { return ge(x, y); }, std::greater_equal<double>{}},
  };
  for (const auto& c : cases) {
    const auto out = c.op(a, b);
    ASSERT_EQ(out.shape(), out_shape) << c.name;
    const auto got = out.to_vector();
    for (std::int64_t i = 0; i < numel_of(out_shape); ++i) {
      const auto idx = unravel(i, out_shape);
      EXPECT_EQ(got[static_cast<std::size_t>(i)], c.ref(av[broadcast_at(idx, a.shape())], bv[broadcast_at(idx, b.shape())]))
          << c.name << " element " << i;
    }
  }
}

TEST(Compare, TensorScalar) {
  // A float tensor compares with the scalar rounded to float, as PyTorch does.
  const auto f = tensor<float>({0.1f, 0.2f, -1.0f});
  EXPECT_EQ(eq(f, 0.1).to_vector(), (std::vector<bool>{true, false, false}));
  EXPECT_EQ(le(f, 0.2).to_vector(), (std::vector<bool>{true, true, true}));
  // Integer tensors compare exactly with a fractional scalar.
  const auto ids = tensor<std::int64_t>({1, 2, 3, 4});
  EXPECT_EQ(lt(ids, 2.5).to_vector(), (std::vector<bool>{true, true, false, false}));
  EXPECT_EQ(ge(ids, 3).to_vector(), (std::vector<bool>{false, false, true, true}));
  EXPECT_EQ(ne(ids, 2).to_vector(), (std::vector<bool>{true, false, true, true}));
  EXPECT_EQ(gt(ids, 3.0).to_vector(), (std::vector<bool>{false, false, false, true}));
  // NaN compares unequal to everything.
  const auto n = tensor<double>({std::nan(""), 1.0});
  EXPECT_EQ(eq(n, n).to_vector(), (std::vector<bool>{false, true}));
  EXPECT_EQ(ne(n, 1.0).to_vector(), (std::vector<bool>{true, false}));
  // Non-contiguous input.
  const auto x = transpose(randn<double>({7, 3}), 0, 1);
  const auto xv = x.to_vector();
  const auto got = gt(x, 0.25).to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) EXPECT_EQ(got[i], xv[i] > 0.25);
}

TEST(Compare, LogicalOps) {
  const auto a = random_mask({4, 1, 5});
  const auto b = random_mask({3, 1});
  const Shape out_shape{4, 3, 5};
  const auto av = a.to_vector(), bv = b.to_vector();
  const auto land = logical_and(a, b).to_vector(), lor = logical_or(a, b).to_vector(),
             lxor = logical_xor(a, b).to_vector();
  for (std::int64_t i = 0; i < numel_of(out_shape); ++i) {
    const auto idx = unravel(i, out_shape);
    const bool x = av[broadcast_at(idx, a.shape())], y = bv[broadcast_at(idx, b.shape())];
    const auto k = static_cast<std::size_t>(i);
    EXPECT_EQ(land[k], x && y);
    EXPECT_EQ(lor[k], x || y);
    EXPECT_EQ(lxor[k], x != y);
  }
  const auto m = transpose(random_mask({5, 2}), 0, 1);
  const auto mv = m.to_vector(), nv = logical_not(m).to_vector();
  for (std::size_t i = 0; i < mv.size(); ++i) EXPECT_EQ(nv[i], !mv[i]);
}

TEST(Compare, Errors) {
  EXPECT_KILN_ERROR(lt(randn<double>({2, 3}), randn<double>({4})), "kiln::lt", "[2, 3]", "[4]");
  EXPECT_KILN_ERROR(logical_or(random_mask({3}), random_mask({2})), "kiln::logical_or", "[3]", "[2]");
}

// ---------------------------------------------------------------------------------------------
// where.hpp

TEST(Where, BroadcastForwardMatchesReference) {
  const auto cond = random_mask({4, 1, 5});
  const auto a = transpose(randn<double>({1, 3}), 0, 1);  // [3, 1]
  const auto b = slice(randn<double>({10}), 0, 0, 10, 2);  // [5], step 2
  const auto out = where(cond, a, b);
  const Shape out_shape = broadcast3(cond.shape(), a.shape(), b.shape());
  ASSERT_EQ(out.shape(), out_shape);
  const auto cv = cond.to_vector();
  const auto av = a.to_vector(), bv = b.to_vector(), got = out.to_vector();
  for (std::int64_t i = 0; i < numel_of(out_shape); ++i) {
    const auto idx = unravel(i, out_shape);
    const double expected = cv[broadcast_at(idx, cond.shape())] ? av[broadcast_at(idx, a.shape())]
                                                                 : bv[broadcast_at(idx, b.shape())];
    EXPECT_EQ(got[static_cast<std::size_t>(i)], expected) << "element " << i;
  }
  // Scalar branches.
  const auto x = randn<double>({3, 4});
  const auto m = gt(x, 0.0);
  const auto relu = where(m, x, 0.0).to_vector(), neg = where(m, -7.0, x).to_vector(), xv = x.to_vector();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    EXPECT_EQ(relu[i], xv[i] > 0 ? xv[i] : 0.0);
    EXPECT_EQ(neg[i], xv[i] > 0 ? -7.0 : xv[i]);
  }
}

TEST(Where, Gradcheck) {
  const auto cond = random_mask({4, 1, 5});
  EXPECT_GRADCHECK([cond](const std::vector<Tensor<double>>& x) { return where(cond, x[0], x[1]); },
                   {randn<double>({3, 1}), permute(randn<double>({5, 4, 3}), {1, 2, 0}).detach()});
  // The condition broadcast along a dim the operands have: a gets the sum over that dim.
  const auto row = random_mask({1, 6});
  EXPECT_GRADCHECK([row](const std::vector<Tensor<double>>& x) { return where(row, x[0], x[1]); },
                   {randn<double>({7, 6}), randn<double>({6})});
  EXPECT_GRADCHECK([row](const std::vector<Tensor<double>>& x) { return where(row, x[0], 2.5); },
                   {transpose(randn<double>({6, 7}), 0, 1).detach()});
}

TEST(Where, GradientGoesToTheChosenBranch) {
  auto a = randn<double>({2, 3}).requires_grad_();
  auto b = randn<double>({2, 3}).requires_grad_();
  const auto cond = Tensor<bool>::from_vector({true, false, true, false, false, true}, {2, 3});
  sum(where(cond, a, b)).backward();
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{1, 0, 1, 0, 0, 1}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{0, 1, 0, 1, 1, 0}));
}

TEST(MaskedFill, ForwardMatchesReference) {
  const auto t = transpose(randn<double>({5, 4}), 0, 1);  // [4, 5]
  const auto mask = random_mask({5});
  const auto got = masked_fill(t, mask, -1e9).to_vector();
  const auto tv = t.to_vector();
  const auto mv = mask.to_vector();
  for (std::size_t i = 0; i < tv.size(); ++i) EXPECT_EQ(got[i], mv[i % 5] ? -1e9 : tv[i]);
  // A mask of the full shape, on an int tensor.
  const auto ids = tensor<std::int64_t>({3, 1, 4, 1}, {2, 2});
  EXPECT_EQ(masked_fill(ids, eq(ids, 1), 0).to_vector(), (std::vector<std::int64_t>{3, 0, 4, 0}));
}

TEST(MaskedFill, Gradcheck) {
  const auto mask = random_mask({4, 1});
  EXPECT_GRADCHECK([mask](const std::vector<Tensor<double>>& x) { return masked_fill(x[0], mask, 3.0); },
                   {randn<double>({3, 4, 5})});
  const auto full_mask = random_mask({3, 7});
  EXPECT_GRADCHECK([full_mask](const std::vector<Tensor<double>>& x) { return masked_fill(x[0], full_mask, 0.0); },
                   {transpose(randn<double>({7, 3}), 0, 1).detach()});
}

TEST(WhereErrors, NameTheOpAndTheShapes) {
  EXPECT_KILN_ERROR(where(random_mask({2, 3}), randn<double>({4}), randn<double>({2, 3})), "kiln::where",
                    "[2, 3]", "[4]");
  EXPECT_KILN_ERROR(where(random_mask({5}), randn<double>({2, 1}), randn<double>({3, 1})), "kiln::where", "[5]",
                    "[2, 1]", "[3, 1]");
  EXPECT_KILN_ERROR(masked_fill(randn<double>({4, 5}), random_mask({3}), 0.0), "kiln::masked_fill", "[3]", "[4, 5]");
  // The mask must broadcast to the input, not the other way round.
  EXPECT_KILN_ERROR(masked_fill(randn<double>({5}), random_mask({2, 5}), 0.0), "kiln::masked_fill", "[2, 5]", "[5]");
}

// ---------------------------------------------------------------------------------------------
// gather.hpp: gather, scatter_add, index_select

TEST(Gather, MatchesReferenceAlongEveryDim) {
  const auto t = permute(randn<double>({6, 5, 4}), {2, 0, 1});  // [4, 6, 5], non-contiguous
  const auto tv = t.to_vector();
  for (std::int64_t dim : {0, 1, 2, -1}) {
    const std::size_t d = static_cast<std::size_t>(dim < 0 ? dim + 3 : dim);
    // index: smaller than t in the other dims, longer than t along dim (so indices repeat).
    Shape ishape{3, 5, 2};
    ishape[d] = 9;
    const auto index = randint<std::int64_t>(0, t.shape()[d], ishape);
    const auto out = gather(t, dim, index);
    ASSERT_EQ(out.shape(), ishape);
    const auto iv = index.to_vector();
    const auto got = out.to_vector();
    for (std::int64_t i = 0; i < numel_of(ishape); ++i) {
      auto idx = unravel(i, ishape);
      idx[d] = iv[static_cast<std::size_t>(i)];
      EXPECT_EQ(got[static_cast<std::size_t>(i)], tv[static_cast<std::size_t>(ravel(idx, t.shape()))])
          << "dim " << dim << " element " << i;
    }
  }
  // A non-contiguous index, and out[i][j] = t[i][index[i][j]] spelled out.
  const auto m = tensor<double>({10, 11, 12, 20, 21, 22}, {2, 3});
  const auto index = transpose(tensor<std::int64_t>({2, 0, 0, 1}, {2, 2}), 0, 1);  // [[2, 0], [0, 1]]
  EXPECT_EQ(gather(m, 1, index).to_vector(), (std::vector<double>{12, 10, 20, 21}));
}

TEST(Gather, Gradcheck) {
  // 9 picks from a dim of 4: indices repeat, so gradients add up.
  const auto index = randint<std::int64_t>(0, 4, {3, 9, 2});
  EXPECT_GRADCHECK([index](const std::vector<Tensor<double>>& x) { return gather(x[0], 1, index); },
                   {permute(randn<double>({4, 5, 3}), {2, 0, 1}).detach()});
  const auto index0 = randint<std::int64_t>(0, 3, {7, 2});
  EXPECT_GRADCHECK([index0](const std::vector<Tensor<double>>& x) { return gather(x[0], 0, index0); },
                   {randn<double>({3, 5})});
}

TEST(ScatterAdd, MatchesReferenceAndGradcheck) {
  const auto t = randn<double>({4, 6});
  const auto index = randint<std::int64_t>(0, 6, {3, 11});
  const auto src = transpose(randn<double>({11, 3}), 0, 1);
  auto ref = t.to_vector();
  const auto iv = index.to_vector();
  const auto sv = src.to_vector();
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 11; ++j)
      ref[static_cast<std::size_t>(i * 6 + iv[static_cast<std::size_t>(i * 11 + j)])] += sv[static_cast<std::size_t>(i * 11 + j)];
  EXPECT_LT(kiln::testing::relative_error(scatter_add(t, 1, index, src).to_vector(), ref), 1e-15);
  EXPECT_GRADCHECK([index](const std::vector<Tensor<double>>& x) { return scatter_add(x[0], 1, index, x[1]); },
                   {randn<double>({4, 6}), randn<double>({3, 11})});
  const auto index0 = randint<std::int64_t>(0, 2, {5, 3});
  EXPECT_GRADCHECK([index0](const std::vector<Tensor<double>>& x) { return scatter_add(x[0], 0, index0, x[1]); },
                   {transpose(randn<double>({3, 2}), 0, 1).detach(), randn<double>({5, 3})});
}

TEST(IndexSelect, MatchesReferenceAlongEveryDim) {
  const auto t = permute(randn<double>({7, 5, 6}), {1, 2, 0});  // [5, 6, 7], non-contiguous
  const auto tv = t.to_vector();
  const auto index = tensor<std::int64_t>({3, 0, 3, 4, 1, 3});
  const auto iv = index.to_vector();
  for (std::int64_t dim : {0, 1, 2, -2}) {
    const std::size_t d = static_cast<std::size_t>(dim < 0 ? dim + 3 : dim);
    const auto out = index_select(t, dim, index);
    Shape shape = t.shape();
    shape[d] = 6;
    ASSERT_EQ(out.shape(), shape);
    const auto got = out.to_vector();
    for (std::int64_t i = 0; i < numel_of(shape); ++i) {
      auto idx = unravel(i, shape);
      idx[d] = iv[static_cast<std::size_t>(idx[d])];
      EXPECT_EQ(got[static_cast<std::size_t>(i)], tv[static_cast<std::size_t>(ravel(idx, t.shape()))])
          << "dim " << dim << " element " << i;
    }
  }
  // An empty index, and a strided index.
  EXPECT_EQ(index_select(t, 1, tensor<std::int64_t>({}, {0})).shape(), (Shape{5, 0, 7}));
  const auto strided = slice(index, 0, 0, 6, 2);  // {3, 3, 1}
  EXPECT_EQ(index_select(t, 0, strided).to_vector(), index_select(t, 0, tensor<std::int64_t>({3, 3, 1})).to_vector());
}

TEST(IndexSelect, GradcheckWithRepeatedIndices) {
  const auto index = tensor<std::int64_t>({2, 0, 2, 2, 4, 0, 1});
  EXPECT_GRADCHECK([index](const std::vector<Tensor<double>>& x) { return index_select(x[0], 1, index); },
                   {permute(randn<double>({5, 3, 4}), {1, 0, 2}).detach()});
  EXPECT_GRADCHECK([index](const std::vector<Tensor<double>>& x) { return index_select(x[0], 0, index); },
                   {randn<double>({5, 3})});
  EXPECT_GRADCHECK([index](const std::vector<Tensor<double>>& x) { return index_select(x[0], -1, index); },
                   {transpose(randn<double>({5, 2}), 0, 1).detach()});
}

TEST(GatherErrors, NameTheOpTheValueAndTheSize) {
  const auto t = randn<double>({3, 5});
  EXPECT_KILN_ERROR(gather(t, 1, tensor<std::int64_t>({0, 5}, {1, 2})), "kiln::gather", "index 5", "dim 1",
                    "size 5", "[3, 5]");
  EXPECT_KILN_ERROR(gather(t, 0, tensor<std::int64_t>({-1}, {1, 1})), "kiln::gather", "index -1", "dim 0", "size 3");
  EXPECT_KILN_ERROR(gather(t, 1, tensor<std::int64_t>({0, 1})), "kiln::gather", "[2]", "[3, 5]");
  EXPECT_KILN_ERROR(gather(t, 1, zeros<std::int64_t>({4, 1})), "kiln::gather", "[4, 1]", "[3, 5]", "dim 0");
  EXPECT_KILN_ERROR(gather(t, 2, zeros<std::int64_t>({1, 1})), "kiln::gather", "dim 2");
  EXPECT_KILN_ERROR(index_select(t, 0, tensor<std::int64_t>({0, 3, 1})), "kiln::index_select", "index 3", "dim 0",
                    "size 3");
  EXPECT_KILN_ERROR(index_select(t, 1, zeros<std::int64_t>({2, 2})), "kiln::index_select", "1-D", "[2, 2]");
  EXPECT_KILN_ERROR(scatter_add(t, 1, zeros<std::int64_t>({2, 2}), randn<double>({2, 3})), "kiln::scatter_add",
                    "[2, 3]", "[2, 2]");
  EXPECT_KILN_ERROR(scatter_add(t, 1, full<std::int64_t>({1, 1}, 9), randn<double>({1, 1})), "kiln::scatter_add",
                    "index 9", "size 5");
}

// ---------------------------------------------------------------------------------------------
// embedding.hpp

TEST(Embedding, ForwardMatchesReference) {
  const auto weight = transpose(randn<float>({6, 11}), 0, 1);  // [11, 6], non-contiguous
  const auto ids = randint<std::int64_t>(0, 11, {3, 7});
  const auto out = embedding(weight, ids);
  ASSERT_EQ(out.shape(), (Shape{3, 7, 6}));
  const auto wv = weight.to_vector();
  const auto iv = ids.to_vector();
  const auto got = out.to_vector();
  for (std::size_t p = 0; p < iv.size(); ++p)
    for (std::size_t k = 0; k < 6; ++k)
      EXPECT_EQ(got[p * 6 + k], wv[static_cast<std::size_t>(iv[p]) * 6 + k]) << "position " << p;
  // One id, as a 0-d tensor: shape [D].
  EXPECT_EQ(embedding(weight, full<std::int64_t>({}, 4)).to_vector(),
            slice(weight, 0, 4, 5).to_vector());
}

TEST(Embedding, GradcheckWithRepeatedIds) {
  const auto ids = randint<std::int64_t>(0, 5, {3, 7});  // 21 ids over a vocabulary of 5
  EXPECT_GRADCHECK([ids](const std::vector<Tensor<double>>& x) { return embedding(x[0], ids); },
                   {transpose(randn<double>({4, 5}), 0, 1).detach()});
  // 1-D ids, one of them used three times. (No gradcheck with padding_idx: its row is used by the
  // forward but deliberately gets no gradient; PaddingRowGetsNoGradient covers it.)
  const auto few = tensor<std::int64_t>({3, 1, 3, 3});
  EXPECT_GRADCHECK([few](const std::vector<Tensor<double>>& x) { return embedding(x[0], few); },
                   {randn<double>({4, 2})});
}

TEST(Embedding, BackwardSumsRowsInIdOrderInChunks) {
  // Each row sums its positions in order, in chunks of 32 (math/index_add.hpp): the float result
  // is bit-identical to this loop. ~60 positions per id: every row has two or more chunks.
  const std::int64_t vocab = 50, width = 33, n = 3000;
  auto weight = randn<float>({vocab, width}).requires_grad_();
  const auto ids = randint<std::int64_t>(0, vocab, {n});
  const auto g = randn<float>({n, width});
  embedding(weight, ids).backward(g);
  const auto iv = ids.to_vector();
  const auto gv = g.to_vector();
  std::vector<float> ref(static_cast<std::size_t>(vocab * width), 0.0f);
  std::vector<double> exact(ref.size(), 0.0);
  for (std::int64_t r = 0; r < vocab; ++r) {
    std::vector<std::size_t> positions;
    for (std::size_t p = 0; p < iv.size(); ++p)
      if (iv[p] == r) positions.push_back(p);
    for (std::size_t k = 0; k < static_cast<std::size_t>(width); ++k) {
      float total = 0.0f;
      for (std::size_t c0 = 0; c0 < positions.size(); c0 += 32) {
        float chunk = 0.0f;
        for (std::size_t p = c0; p < std::min(positions.size(), c0 + 32); ++p)
          chunk += gv[positions[p] * static_cast<std::size_t>(width) + k];
        total += chunk;
      }
      const std::size_t at = static_cast<std::size_t>(r) * static_cast<std::size_t>(width) + k;
      ref[at] = total;
      for (const std::size_t p : positions) exact[at] += gv[p * static_cast<std::size_t>(width) + k];
    }
  }
  const auto grad = weight.grad().to_vector();
  EXPECT_EQ(grad, ref);
  for (std::size_t i = 0; i < grad.size(); ++i) EXPECT_NEAR(grad[i], exact[i], 1e-4) << i;
}

TEST(Embedding, BackwardChunkOrderByHand) {
  // One id at 64 positions: 2^24 first, then 63 ones. A float running sum loses every 1 added to
  // 2^24 (the spacing there is 2, and 2^24 + 1 rounds to even): 2^24. In chunks of 32 the second
  // chunk's ones add up to 32 first: (2^24 + 31 ones) + 32 = 2^24 + 32, exactly representable.
  std::vector<float> g(64, 1.0f);
  g[0] = 16777216.0f;
  auto weight = zeros<float>({2, 1}).requires_grad_();
  embedding(weight, zeros<std::int64_t>({64})).backward(tensor<float>(g, {64, 1}));
  EXPECT_EQ(weight.grad().to_vector(), (std::vector<float>{16777248.0f, 0.0f}));
  // 32 positions are one chunk: the running sum, 2^24.
  auto w32 = zeros<float>({2, 1}).requires_grad_();
  const std::vector<float> first32(g.begin(), g.begin() + 32);
  embedding(w32, zeros<std::int64_t>({32})).backward(tensor<float>(first32, {32, 1}));
  EXPECT_EQ(w32.grad().to_vector(), (std::vector<float>{16777216.0f, 0.0f}));
}

TEST(Embedding, PaddingRowGetsNoGradient) {
  auto weight = randn<double>({6, 4}).requires_grad_();
  const auto ids = tensor<std::int64_t>({1, 5, 1, 0, 5}, {5});
  // The padding row is still looked up as is.
  const auto out = embedding(weight, ids, 5);
  EXPECT_EQ(slice(out, 0, 1, 2).to_vector(), slice(weight, 0, 5, 6).to_vector());
  sum(out).backward();
  const auto grad = weight.grad().to_vector();
  const std::vector<double> counts{1, 2, 0, 0, 0, 0};  // row 5 padded: 0, not 2
  for (std::size_t r = 0; r < 6; ++r)
    for (std::size_t k = 0; k < 4; ++k) EXPECT_EQ(grad[r * 4 + k], counts[r]) << "row " << r;
  // A negative padding_idx counts from the end.
  auto w2 = randn<double>({6, 4}).requires_grad_();
  sum(embedding(w2, ids, -1)).backward();
  EXPECT_EQ(w2.grad().to_vector(), weight.grad().to_vector());
}

TEST(Embedding, GradientIsTheSameForAnyThreadCount) {
#ifdef _OPENMP
  // Big enough that the backward runs in parallel chunks.
  const std::int64_t vocab = 1000, width = 64, n = 20000;
  const auto w = randn<float>({vocab, width});
  const auto ids = randint<std::int64_t>(0, vocab, {n});
  const auto g = randn<float>({n, width});
  auto grad_with = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    auto leaf = w.detach().requires_grad_();
    embedding(leaf, ids).backward(g);
    omp_set_num_threads(saved);
    return leaf.grad().to_vector();
  };
  EXPECT_EQ(grad_with(1), grad_with(std::max(2, omp_get_max_threads())));
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

TEST(Embedding, Errors) {
  const auto w = randn<double>({5, 3});
  EXPECT_KILN_ERROR(embedding(w, tensor<std::int64_t>({0, 7, 1})), "kiln::embedding", "id 7", "size 5", "[5, 3]");
  EXPECT_KILN_ERROR(embedding(w, tensor<std::int64_t>({-2})), "kiln::embedding", "id -2", "size 5");
  EXPECT_KILN_ERROR(embedding(randn<double>({5}), tensor<std::int64_t>({0})), "kiln::embedding", "2-D", "[5]");
  EXPECT_KILN_ERROR(embedding(w, tensor<std::int64_t>({0}), 5), "kiln::embedding", "padding_idx 5", "size 5");
}

// ---------------------------------------------------------------------------------------------
// topk.hpp

namespace {

// Reference topk of one line: positions ordered by value (best first), ties by position.
std::vector<std::int64_t> reference_topk(const std::vector<double>& line, std::int64_t k, bool largest) {
  std::vector<std::int64_t> order(line.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    const double x = line[static_cast<std::size_t>(a)], y = line[static_cast<std::size_t>(b)];
    return largest ? x > y : x < y;
  });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

}  // namespace

TEST(TopK, MatchesReferenceAlongEachDim) {
  // Integer values in a small range: many ties, which must keep the lower position first.
  for (const auto& t : {randn<double>({6, 9}), transpose(randint<double>(-3, 4, {9, 6}), 0, 1)}) {
    const auto tv = t.to_vector();
    for (std::int64_t dim : {1, 0}) {
      for (bool largest : {true, false}) {
        const std::int64_t k = dim == 1 ? 4 : 5;
        const auto [values, indices] = topk(t, k, dim, largest);
        const std::size_t d = static_cast<std::size_t>(dim);
        Shape shape = t.shape();
        shape[d] = k;
        ASSERT_EQ(values.shape(), shape);
        ASSERT_EQ(indices.shape(), shape);
        const auto vv = values.to_vector();
        const auto iv = indices.to_vector();
        const std::int64_t lines = t.shape()[1 - d];
        for (std::int64_t l = 0; l < lines; ++l) {
          std::vector<double> line;
          for (std::int64_t j = 0; j < t.shape()[d]; ++j)
            line.push_back(tv[static_cast<std::size_t>(dim == 1 ? l * 9 + j : j * 9 + l)]);
          const auto ref = reference_topk(line, k, largest);
          for (std::int64_t j = 0; j < k; ++j) {
            const auto at = static_cast<std::size_t>(dim == 1 ? l * k + j : j * lines + l);
            EXPECT_EQ(iv[at], ref[static_cast<std::size_t>(j)]) << "dim " << dim << " line " << l << " rank " << j;
            EXPECT_EQ(vv[at], line[static_cast<std::size_t>(ref[static_cast<std::size_t>(j)])]);
          }
        }
      }
    }
  }
}

TEST(TopK, TiesUnsortedKBoundsAndNaN) {
  const auto t = tensor<double>({1, 3, 3, 2, 3});
  auto r = topk(t, 3);
  EXPECT_EQ(r.values.to_vector(), (std::vector<double>{3, 3, 3}));
  EXPECT_EQ(r.indices.to_vector(), (std::vector<std::int64_t>{1, 2, 4}));
  r = topk(t, 2, 0, /*largest=*/false);
  EXPECT_EQ(r.indices.to_vector(), (std::vector<std::int64_t>{0, 3}));
  // Unsorted: the same selection, in position order.
  const auto u = tensor<double>({0.5, 4.0, -1.0, 2.0, 3.0});
  r = topk(u, 3, -1, true, /*sorted=*/false);
  EXPECT_EQ(r.indices.to_vector(), (std::vector<std::int64_t>{1, 3, 4}));
  EXPECT_EQ(r.values.to_vector(), (std::vector<double>{4.0, 2.0, 3.0}));
  // k = 0 and k = size.
  EXPECT_EQ(topk(u, 0).values.shape(), (Shape{0}));
  EXPECT_EQ(topk(u, 5).indices.to_vector(), (std::vector<std::int64_t>{1, 4, 3, 0, 2}));
  // NaN ranks above every number.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto n = tensor<double>({1.0, nan, 3.0});
  EXPECT_EQ(topk(n, 2).indices.to_vector(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(topk(n, 2, 0, false).indices.to_vector(), (std::vector<std::int64_t>{0, 2}));
  // Low precision: values are the input's own elements.
  const auto h = randn<bf16>({4, 7});
  const auto hr = topk(h, 3);
  const auto hv = h.to_vector();
  const auto hi = hr.indices.to_vector();
  const auto hvals = hr.values.to_vector();
  for (std::size_t i = 0; i < hi.size(); ++i)
    EXPECT_EQ(static_cast<float>(hvals[i]), static_cast<float>(hv[(i / 3) * 7 + static_cast<std::size_t>(hi[i])]));
}

TEST(TopK, GradcheckWithDistinctValues) {
  // randn values are distinct (gaps far above the finite-difference step), so the selection is
  // locally constant and the values are differentiable.
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return topk(x[0], 3).values; },
                   {randn<double>({4, 7})});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return topk(x[0], 2, 0, false).values; },
                   {transpose(randn<double>({5, 5}), 0, 1).detach()});
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& x) { return topk(x[0], 4, 1, true, false).values; },
                   {randn<double>({2, 9, 3})});
}

TEST(TopK, Errors) {
  const auto t = randn<double>({3, 9});
  EXPECT_KILN_ERROR(topk(t, 10), "kiln::topk", "k = 10", "size 9", "[3, 9]");
  EXPECT_KILN_ERROR(topk(t, 4, 0), "kiln::topk", "k = 4", "dim 0", "size 3");
  EXPECT_KILN_ERROR(topk(t, -1), "kiln::topk", "k = -1");
  EXPECT_KILN_ERROR(topk(t, 1, 2), "kiln::topk", "dim 2");
}
