// The CUDA indexing kernels against the CPU ops (the reference): embedding, index_select, gather,
// scatter_add and topk, forward and backward, on odd shapes, repeated indices, non-contiguous
// inputs, float/double/bf16. Every result here is compared bit for bit: the forwards are copies
// and selections, and the backward scatters add in the CPU's order (ascending source position per
// destination) and round like it, so the GPU must reproduce the CPU exactly — and itself, run to
// run. Also: out-of-range indices and bad k raise kiln::Error naming the op and the shapes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// Same shape and the same bytes in every element (row-major order, any strides).
template <class T>
::testing::AssertionResult same_bits(const Tensor<T>& got, const Tensor<T>& want) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "shape " << str(got.shape()) << " vs " << str(want.shape());
  const std::vector<T> a = got.to_vector(), b = want.to_vector();
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "element " << i << " of " << a.size() << ": " << static_cast<double>(a[i])
                                           << " vs " << static_cast<double>(b[i]);
  return ::testing::AssertionSuccess();
}

template <class T>
Tensor<T> random_values(const Shape& shape) {
  return cast<T>(randn<float>(shape));
}

// A leaf on the GPU with x's values, non-contiguous when x is (a transposed view).
template <class T>
Tensor<T> gpu_leaf(const Tensor<T>& x) {
  if (x.is_contiguous()) return on_gpu(x).requires_grad_();
  const Tensor<T> base = contiguous(transpose(x, 0, 1));
  return transpose(on_gpu(base), 0, 1).detach().requires_grad_();
}

template <class T>
Tensor<T> cpu_leaf(const Tensor<T>& x) {
  return x.detach().requires_grad_();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// embedding

template <class T>
void embedding_forward_case(std::int64_t vocab, std::int64_t width, const Shape& ids_shape) {
  const auto w = random_values<T>({vocab, width});
  const auto ids = randint<std::int64_t>(0, vocab, ids_shape);
  EXPECT_TRUE(same_bits(on_cpu(embedding(on_gpu(w), on_gpu(ids))), embedding(w, ids)))
      << dtype_name<T> << " vocab " << vocab << " width " << width << " ids " << str(ids_shape);
}

TEST(EmbeddingCuda, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Row sizes that take each copy width: 16-byte vectors (width 4096 float, 7168 bf16), 8/4/2 bytes.
  embedding_forward_case<float>(1, 1, {1});
  embedding_forward_case<float>(7, 33, {3, 7});
  embedding_forward_case<float>(1003, 4096, {2, 513});
  embedding_forward_case<double>(33, 7, {1000 + 3});
  embedding_forward_case<double>(50, 64, {4, 5, 6});
  embedding_forward_case<bf16>(129, 7168, {257});
  embedding_forward_case<bf16>(77, 5, {33});
  embedding_forward_case<bf16>(64, 1, {7, 1});
  // A 0-d id, and no ids at all.
  const auto w = random_values<float>({11, 6});
  EXPECT_TRUE(same_bits(on_cpu(embedding(on_gpu(w), on_gpu(full<std::int64_t>({}, 4)))),
                        embedding(w, full<std::int64_t>({}, 4))));
  EXPECT_EQ(embedding(on_gpu(w), on_gpu(zeros<std::int64_t>({0}))).shape(), (Shape{0, 6}));
  // Non-contiguous weight and ids; a weight whose rows start off 16-byte boundaries.
  const auto wt = transpose(random_values<float>({6, 11}), 0, 1);
  const auto ids_t = transpose(randint<std::int64_t>(0, 11, {7, 3}), 0, 1);
  EXPECT_TRUE(same_bits(on_cpu(embedding(transpose(on_gpu(contiguous(transpose(wt, 0, 1))), 0, 1),
                                         transpose(on_gpu(contiguous(transpose(ids_t, 0, 1))), 0, 1))),
                        embedding(wt, ids_t)));
  const auto big = random_values<float>({12, 3});
  const auto shifted_ids = randint<std::int64_t>(0, 11, {40});
  EXPECT_TRUE(same_bits(on_cpu(embedding(slice(on_gpu(big), 0, 1, 12), on_gpu(shifted_ids))),
                        embedding(slice(big, 0, 1, 12), shifted_ids)));
}

template <class T>
void embedding_backward_case(std::int64_t vocab, std::int64_t width, const Tensor<std::int64_t>& ids,
                             std::optional<std::int64_t> pad = std::nullopt) {
  const std::int64_t n = ids.numel();
  const auto w = random_values<T>({vocab, width});
  const auto g = random_values<T>({n, width});
  auto cw = cpu_leaf(w);
  embedding(cw, ids, pad).backward(g);
  auto grad_on_gpu = [&] {
    auto gw = gpu_leaf(w);
    embedding(gw, on_gpu(ids), pad).backward(on_gpu(g));
    return on_cpu(gw.grad());
  };
  const auto first = grad_on_gpu();
  EXPECT_TRUE(same_bits(first, cw.grad())) << dtype_name<T> << " vocab " << vocab << " width " << width << " n " << n;
  EXPECT_TRUE(same_bits(grad_on_gpu(), first)) << "not deterministic: " << dtype_name<T> << " vocab " << vocab;
}

template <class T>
void embedding_backward_case(std::int64_t vocab, std::int64_t width, std::int64_t n, std::int64_t id_range,
                             std::optional<std::int64_t> pad = std::nullopt) {
  embedding_backward_case<T>(vocab, width, randint<std::int64_t>(0, id_range, {n}), pad);
}

TEST(EmbeddingCuda, BackwardIsBitwiseTheCpuSumAndDeterministic) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  embedding_backward_case<float>(50, 33, 1000, 50);        // ~20 repeats per id, unvectorised rows
  embedding_backward_case<float>(1000, 64, 20000, 1000);   // 16-byte vectors
  embedding_backward_case<float>(7, 128, 5000, 3);         // 3 hot ids of 7, 4 rows never used
  embedding_backward_case<float>(129280 / 16, 256, 3001, 129280 / 16);
  embedding_backward_case<double>(33, 7, 1003, 33);
  embedding_backward_case<double>(300, 130, 777, 40);
  embedding_backward_case<bf16>(257, 7168 / 8, 4096, 257);
  embedding_backward_case<bf16>(5, 9, 100, 5);
  embedding_backward_case<float>(1, 3, 17, 1);
  embedding_backward_case<float>(6, 4, 0, 6);  // no ids: a zero gradient
  // padding_idx (also negative) gets no gradient.
  embedding_backward_case<float>(40, 64, 3000, 40, 7);
  embedding_backward_case<double>(40, 3, 300, 40, -1);
  // Rows of more than 32 positions are summed in chunks (math/index_add.hpp): the big config's
  // table (256 positions an id), a padding id among the hot ones, chunks of double and of
  // unvectorised rows.
  embedding_backward_case<bf16>(2048, 768, 16384, 64);
  embedding_backward_case<float>(40, 64, 3000, 4, 2);
  embedding_backward_case<double>(9, 5, 700, 3);
  embedding_backward_case<bf16>(11, 13, 2000, 11);
  // Rows of exactly 32, 33, 64, 65 and 1 position, shuffled.
  std::vector<std::int64_t> counted;
  const std::int64_t counts[] = {32, 33, 64, 65, 1};
  for (std::int64_t r = 0; r < 5; ++r) counted.insert(counted.end(), static_cast<std::size_t>(counts[r]), r);
  std::shuffle(counted.begin(), counted.end(), std::mt19937(std::random_device{}()));
  embedding_backward_case<float>(6, 33, tensor<std::int64_t>(counted));
  embedding_backward_case<bf16>(6, 64, tensor<std::int64_t>(counted));
}

TEST(EmbeddingCuda, OutOfRangeIdsAreErrors) {
  KILN_REQUIRE_GPU();
  const auto w = on_gpu(randn<double>({5, 3}));
  EXPECT_KILN_ERROR(embedding(w, on_gpu(tensor<std::int64_t>({0, 7, 1}))), "kiln::embedding", "id 7", "size 5", "[5, 3]");
  EXPECT_KILN_ERROR(embedding(w, on_gpu(tensor<std::int64_t>({-2}))), "kiln::embedding", "id -2", "size 5");
  // The first bad id in row-major order is the one named.
  EXPECT_KILN_ERROR(embedding(w, on_gpu(tensor<std::int64_t>({1, 2, 9, 0, 8, -1}, {2, 3}))), "kiln::embedding", "id 9");
  // Large tables and many ids: still caught, and the device works afterwards.
  auto ids = randint<std::int64_t>(0, 1000, {5000});
  auto v = ids.to_vector();
  v[4321] = 1000;
  EXPECT_KILN_ERROR(embedding(on_gpu(randn<float>({1000, 256})), on_gpu(tensor<std::int64_t>(v, {5000}))),
                    "kiln::embedding", "id 1000", "size 1000");
  EXPECT_KILN_ERROR(embedding(w, on_gpu(tensor<std::int64_t>({0})), 5), "kiln::embedding", "padding_idx 5");
  EXPECT_EQ(on_cpu(embedding(w, on_gpu(tensor<std::int64_t>({4})))).to_vector(), slice(on_cpu(w), 0, 4, 5).to_vector());
}

// ---------------------------------------------------------------------------------------------
// index_select

template <class T>
void index_select_case(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index) {
  auto ct = cpu_leaf(t);
  auto gt = gpu_leaf(t);
  const auto out = index_select(ct, dim, index);
  const auto gout = index_select(gt, dim, on_gpu(index));
  EXPECT_TRUE(same_bits(on_cpu(gout), out)) << "forward " << dtype_name<T> << " " << str(t.shape()) << " dim " << dim;
  const auto g = random_values<T>(out.shape());
  out.backward(g);
  gout.backward(on_gpu(g));
  EXPECT_TRUE(same_bits(on_cpu(gt.grad()), ct.grad()))
      << "backward " << dtype_name<T> << " " << str(t.shape()) << " dim " << dim;
}

TEST(IndexSelectCuda, ForwardAndBackwardMatchCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  const auto repeats = tensor<std::int64_t>({3, 0, 3, 4, 1, 3});
  for (std::int64_t dim : {0, 1, 2, -1}) {
    index_select_case(permute(random_values<float>({7, 5, 6}), {1, 2, 0}).detach(), dim, repeats);  // non-contiguous
    index_select_case(random_values<double>({5, 6, 7}), dim, repeats);
    index_select_case(random_values<bf16>({5, 6, 7}), dim, repeats);
  }
  index_select_case(random_values<float>({33, 4099}), 1, randint<std::int64_t>(0, 4099, {3000}));
  index_select_case(random_values<float>({1003, 65}), 0, randint<std::int64_t>(0, 1003, {5000}));
  index_select_case(random_values<bf16>({1003, 64}), 0, randint<std::int64_t>(0, 10, {777}));
  index_select_case(transpose(random_values<double>({9, 40}), 0, 1).detach(), 0, randint<std::int64_t>(0, 40, {41}));
  index_select_case(random_values<float>({5, 7}), 1, zeros<std::int64_t>({0}));
  // Hot indices (rows summed in chunks) with outer > 1.
  index_select_case(random_values<float>({5, 7, 33}), 1, randint<std::int64_t>(0, 3, {200}));
  index_select_case(random_values<bf16>({3, 6, 64}), 1, randint<std::int64_t>(0, 2, {300}));
  // A strided index.
  const auto strided = slice(repeats, 0, 0, 6, 2);
  const auto t = random_values<float>({5, 2});
  EXPECT_TRUE(same_bits(on_cpu(index_select(on_gpu(t), 0, slice(on_gpu(repeats), 0, 0, 6, 2))),
                        index_select(t, 0, strided)));
}

// ---------------------------------------------------------------------------------------------
// gather and scatter_add

template <class T>
void gather_case(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index) {
  auto ct = cpu_leaf(t);
  auto gt = gpu_leaf(t);
  const auto out = gather(ct, dim, index);
  const auto gout = gather(gt, dim, on_gpu(index));
  EXPECT_TRUE(same_bits(on_cpu(gout), out)) << "forward " << dtype_name<T> << " " << str(t.shape()) << " dim " << dim;
  const auto g = random_values<T>(out.shape());
  out.backward(g);
  gout.backward(on_gpu(g));
  const auto grad = on_cpu(gt.grad());
  EXPECT_TRUE(same_bits(grad, ct.grad())) << "backward " << dtype_name<T> << " " << str(t.shape()) << " dim " << dim;
  // Run to run.
  auto again = gpu_leaf(t);
  gather(again, dim, on_gpu(index)).backward(on_gpu(g));
  EXPECT_TRUE(same_bits(on_cpu(again.grad()), grad)) << "not deterministic";
}

TEST(GatherCuda, ForwardAndBackwardMatchCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (std::int64_t dim : {0, 1, 2, -1}) {
    const std::size_t d = static_cast<std::size_t>(dim < 0 ? dim + 3 : dim);
    Shape ishape{3, 5, 2};
    ishape[d] = 9;  // longer than t along dim: indices repeat
    const auto t = permute(random_values<double>({6, 5, 4}), {2, 0, 1}).detach();  // [4, 6, 5]
    gather_case(t, dim, randint<std::int64_t>(0, t.shape()[d], ishape));
    gather_case(contiguous(t).detach(), dim, randint<std::int64_t>(0, t.shape()[d], ishape));
    gather_case(cast<float>(contiguous(t)).detach(), dim, randint<std::int64_t>(0, t.shape()[d], ishape));
    gather_case(cast<bf16>(contiguous(t)).detach(), dim, randint<std::int64_t>(0, t.shape()[d], ishape));
  }
  // MoE-like: k of E per row (short lines, one thread per line in the backward).
  gather_case(random_values<float>({4099, 256}), 1, randint<std::int64_t>(0, 256, {4099, 8}));
  gather_case(random_values<bf16>({1000, 33}), 1, randint<std::int64_t>(0, 33, {1000, 33}));
  // Few long lines: the backward takes the sorted path (lines of 3000 along dim 0).
  gather_case(random_values<float>({40, 129}), 0, randint<std::int64_t>(0, 40, {3000, 100}));
  gather_case(random_values<bf16>({7, 65}), 0, randint<std::int64_t>(0, 7, {1003, 65}));
  gather_case(transpose(random_values<double>({33, 20}), 0, 1).detach(), 1, randint<std::int64_t>(0, 33, {20, 500}));
  // A non-contiguous index.
  const auto m = random_values<float>({2, 3});
  const auto index = transpose(tensor<std::int64_t>({2, 0, 0, 1}, {2, 2}), 0, 1);
  EXPECT_TRUE(same_bits(on_cpu(gather(on_gpu(m), 1, transpose(on_gpu(tensor<std::int64_t>({2, 0, 0, 1}, {2, 2})), 0, 1))),
                        gather(m, 1, index)));
}

template <class T>
void scatter_add_case(const Tensor<T>& t, std::int64_t dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  auto ct = cpu_leaf(t), cs = cpu_leaf(src);
  auto gt = gpu_leaf(t), gs = gpu_leaf(src);
  const auto out = scatter_add(ct, dim, index, cs);
  const auto gout = scatter_add(gt, dim, on_gpu(index), gs);
  const auto got = on_cpu(gout);
  EXPECT_TRUE(same_bits(got, out)) << "forward " << dtype_name<T> << " " << str(t.shape()) << " index "
                                   << str(index.shape()) << " dim " << dim;
  EXPECT_TRUE(same_bits(on_cpu(scatter_add(gt.detach(), dim, on_gpu(index), gs.detach())), got)) << "not deterministic";
  const auto g = random_values<T>(out.shape());
  out.backward(g);
  gout.backward(on_gpu(g));
  EXPECT_TRUE(same_bits(on_cpu(gt.grad()), ct.grad()));
  EXPECT_TRUE(same_bits(on_cpu(gs.grad()), cs.grad()));
}

TEST(ScatterAddCuda, ForwardAndBackwardMatchCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Short lines (one thread per line) ...
  scatter_add_case(random_values<double>({4, 6}), 1, randint<std::int64_t>(0, 6, {3, 11}), random_values<double>({3, 11}));
  scatter_add_case(transpose(random_values<float>({6, 4}), 0, 1).detach(), 1, randint<std::int64_t>(0, 6, {4, 20}),
                   transpose(random_values<float>({20, 4}), 0, 1).detach());
  scatter_add_case(random_values<bf16>({65536 / 64, 256}), 1, randint<std::int64_t>(0, 256, {65536 / 64, 8}),
                   random_values<bf16>({65536 / 64, 8}));
  scatter_add_case(random_values<float>({3, 4, 5}), 0, randint<std::int64_t>(0, 3, {7, 4, 5}),
                   random_values<float>({7, 4, 5}));
  // ... and few long lines (sorted path), with many repeats per destination; bf16 rounds per add.
  scatter_add_case(random_values<float>({13, 64}), 0, randint<std::int64_t>(0, 13, {2000, 64}),
                   random_values<float>({2000, 64}));
  scatter_add_case(random_values<bf16>({5, 33}), 0, randint<std::int64_t>(0, 5, {999, 33}), random_values<bf16>({999, 33}));
  scatter_add_case(random_values<double>({3, 300}), 1, randint<std::int64_t>(0, 300, {3, 1000}),
                   transpose(random_values<double>({1000, 3}), 0, 1).detach());
  scatter_add_case(random_values<float>({2, 100, 3}), 1, randint<std::int64_t>(0, 100, {2, 777, 3}),
                   random_values<float>({2, 777, 3}));
}

TEST(IndexingCuda, OutOfRangeIndicesAreErrors) {
  KILN_REQUIRE_GPU();
  const auto t = on_gpu(randn<double>({3, 5}));
  EXPECT_KILN_ERROR(gather(t, 1, on_gpu(tensor<std::int64_t>({0, 5}, {1, 2}))), "kiln::gather", "index 5", "dim 1",
                    "size 5", "[3, 5]");
  EXPECT_KILN_ERROR(gather(t, 0, on_gpu(tensor<std::int64_t>({-1}, {1, 1}))), "kiln::gather", "index -1", "dim 0",
                    "size 3");
  EXPECT_KILN_ERROR(gather(t, 1, on_gpu(zeros<std::int64_t>({4, 1}))), "kiln::gather", "[4, 1]", "[3, 5]", "dim 0");
  EXPECT_KILN_ERROR(index_select(t, 0, on_gpu(tensor<std::int64_t>({0, 3, 1}))), "kiln::index_select", "index 3",
                    "dim 0", "size 3");
  EXPECT_KILN_ERROR(index_select(t, 1, on_gpu(tensor<std::int64_t>({4, -7, 9}))), "kiln::index_select", "index -7",
                    "size 5");
  EXPECT_KILN_ERROR(scatter_add(t, 1, on_gpu(full<std::int64_t>({1, 1}, 9)), on_gpu(randn<double>({1, 1}))),
                    "kiln::scatter_add", "index 9", "size 5");
  EXPECT_KILN_ERROR(scatter_add(t, 1, on_gpu(zeros<std::int64_t>({2, 2})), on_gpu(randn<double>({2, 3}))),
                    "kiln::scatter_add", "[2, 3]", "[2, 2]");
  // The sorted scatter path checks too.
  auto idx = randint<std::int64_t>(0, 13, {2000, 64}).to_vector();
  idx[77777] = 13;
  EXPECT_KILN_ERROR(scatter_add(on_gpu(zeros<float>({13, 64})), 0, on_gpu(tensor<std::int64_t>(idx, {2000, 64})),
                                on_gpu(randn<float>({2000, 64}))),
                    "kiln::scatter_add", "index 13", "dim 0", "size 13");
  // The device still works.
  EXPECT_EQ(on_cpu(gather(t, 1, on_gpu(tensor<std::int64_t>({4}, {1, 1})))).to_vector(),
            (std::vector<double>{on_cpu(t).at({0, 4})}));
}

// ---------------------------------------------------------------------------------------------
// topk

namespace {

// Values with many exact ties (small integers), a few NaNs, and both zeros.
template <class T>
Tensor<T> tied_values(const Shape& shape, std::int64_t levels, bool with_nan) {
  auto v = randint<double>(-levels, levels, shape).to_vector();
  const auto u = rand<double>(shape).to_vector();
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] == 0 && u[i] < 0.5) v[i] = -0.0;
    if (with_nan && u[i] > 0.995) v[i] = std::numeric_limits<double>::quiet_NaN();
  }
  return cast<T>(tensor<double>(v, shape));
}

template <class T>
void topk_case(const Tensor<T>& t, std::int64_t k, std::int64_t dim, bool largest, bool sorted) {
  const auto want = topk(t, k, dim, largest, sorted);
  const auto got = topk(on_gpu(contiguous(t)), k, dim, largest, sorted);
  const std::string what = str(dtype_name<T>, " ", t.shape(), " k ", k, " dim ", dim, largest ? " largest" : " smallest",
                               sorted ? " sorted" : " unsorted");
  EXPECT_TRUE(same_bits(on_cpu(got.indices), want.indices)) << "indices " << what;
  EXPECT_TRUE(same_bits(on_cpu(got.values), want.values)) << "values " << what;
  if (!t.is_contiguous()) {  // the same view on the GPU (strided lines)
    const auto view = topk(transpose(on_gpu(contiguous(transpose(t, 0, 1))), 0, 1), k, dim, largest, sorted);
    EXPECT_TRUE(same_bits(on_cpu(view.indices), want.indices)) << "strided indices " << what;
    EXPECT_TRUE(same_bits(on_cpu(view.values), want.values)) << "strided values " << what;
  }
}

template <class T>
void topk_all_modes(const Tensor<T>& t, std::int64_t k, std::int64_t dim) {
  for (bool largest : {true, false})
    for (bool sorted : {true, false}) topk_case(t, k, dim, largest, sorted);
}

}  // namespace

TEST(TopKCuda, WarpPathMatchesCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  topk_all_modes(random_values<bf16>({65536, 256}), 8, -1);  // MoE routing
  topk_all_modes(random_values<float>({4099, 256}), 8, 1);
  topk_all_modes(tied_values<float>({1000, 64}, 3, true), 8, -1);
  topk_all_modes(tied_values<bf16>({333, 200}, 20, true), 32, -1);
  topk_all_modes(tied_values<double>({77, 512}, 5, true), 17, -1);
  topk_all_modes(random_values<double>({5, 1}), 1, -1);
  topk_all_modes(random_values<float>({7, 33}), 32, -1);
  topk_all_modes(tied_values<float>({9, 300}, 4, false), 1, 0);  // lines along dim 0: strided
  topk_all_modes(transpose(tied_values<float>({100, 37}, 3, true), 0, 1).detach(), 5, -1);
  topk_all_modes(random_values<float>({3, 50, 4}), 7, 1);  // lines along a middle dim: strided
}

TEST(TopKCuda, BlockChunkAndSortPathsMatchCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  // Block: rows up to 4096 float keys (2048 double), any k.
  topk_all_modes(tied_values<float>({33, 1000}, 10, true), 100, -1);
  topk_all_modes(random_values<float>({7, 33}), 33, -1);
  topk_all_modes(random_values<float>({3, 4096}), 4096, -1);
  topk_all_modes(tied_values<bf16>({17, 513}, 50, true), 8, -1);
  topk_all_modes(random_values<double>({4, 2048}), 600, -1);
  topk_all_modes(transpose(tied_values<double>({700, 6}, 30, true), 0, 1).detach(), 40, -1);
  topk_all_modes(tied_values<float>({2, 1500, 3}, 100, true), 64, 1);
  // Chunks: longer lines, k up to a quarter of a block (top-k sampling over a vocabulary).
  topk_all_modes(random_values<float>({5, 129280}), 50, -1);
  topk_all_modes(tied_values<float>({3, 50000}, 100, true), 1024, -1);
  topk_all_modes(tied_values<double>({2, 9000}, 7, true), 512, -1);
  topk_all_modes(tied_values<bf16>({9000, 2}, 100, false), 33, 0);
  // Sort: long lines with large k, k = n included.
  topk_all_modes(tied_values<float>({3, 5000}, 1000, true), 2000, -1);
  topk_all_modes(random_values<float>({2, 4097}), 4097, -1);
  topk_all_modes(tied_values<double>({3, 3000}, 500, true), 1500, -1);
  topk_all_modes(transpose(tied_values<bf16>({6000, 2}, 100, true), 0, 1).detach(), 3000, -1);
}

TEST(TopKCuda, TiesNaNAndKBounds) {
  KILN_REQUIRE_GPU();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto t = on_gpu(tensor<double>({1, 3, 3, 2, 3}));
  EXPECT_EQ(on_cpu(topk(t, 3).indices).to_vector(), (std::vector<std::int64_t>{1, 2, 4}));
  EXPECT_EQ(on_cpu(topk(t, 2, 0, false).indices).to_vector(), (std::vector<std::int64_t>{0, 3}));
  const auto u = on_gpu(tensor<double>({0.5, 4.0, -1.0, 2.0, 3.0}));
  const auto r = topk(u, 3, -1, true, false);
  EXPECT_EQ(on_cpu(r.indices).to_vector(), (std::vector<std::int64_t>{1, 3, 4}));
  EXPECT_EQ(on_cpu(r.values).to_vector(), (std::vector<double>{4.0, 2.0, 3.0}));
  EXPECT_EQ(topk(u, 0).values.shape(), (Shape{0}));
  EXPECT_EQ(on_cpu(topk(u, 5).indices).to_vector(), (std::vector<std::int64_t>{1, 4, 3, 0, 2}));
  const auto n = on_gpu(tensor<float>({1.0f, static_cast<float>(nan), 3.0f, -0.0f, 0.0f}));
  EXPECT_EQ(on_cpu(topk(n, 2).indices).to_vector(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(on_cpu(topk(n, 3, 0, false).indices).to_vector(), (std::vector<std::int64_t>{3, 4, 0}));
  EXPECT_EQ(topk(on_gpu(zeros<float>({0, 5})), 2).values.shape(), (Shape{0, 2}));
  EXPECT_KILN_ERROR(topk(on_gpu(randn<double>({3, 9})), 10), "kiln::topk", "k = 10", "size 9", "[3, 9]");
  EXPECT_KILN_ERROR(topk(on_gpu(randn<double>({3, 9})), 4, 0), "kiln::topk", "k = 4", "dim 0", "size 3");
  EXPECT_KILN_ERROR(topk(on_gpu(randn<double>({3, 9})), 1, 2), "kiln::topk", "dim 2");
}

TEST(TopKCuda, BackwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  auto check = [](auto t, std::int64_t k, std::int64_t dim, bool sorted) {
    using T = typename decltype(t)::value_type;
    auto ct = cpu_leaf(t);
    auto gt = gpu_leaf(t);
    const auto out = topk(ct, k, dim, true, sorted).values;
    const auto gout = topk(gt, k, dim, true, sorted).values;
    const auto g = random_values<T>(out.shape());
    out.backward(g);
    gout.backward(on_gpu(g));
    EXPECT_TRUE(same_bits(on_cpu(gt.grad()), ct.grad())) << dtype_name<T> << " " << str(t.shape()) << " k " << k;
  };
  check(random_values<bf16>({4096, 256}), 8, -1, true);
  check(random_values<float>({33, 1000}), 100, -1, false);
  check(transpose(random_values<double>({9, 7}), 0, 1).detach(), 3, 1, true);
  check(random_values<float>({2, 5000}), 3000, -1, true);
}

// Under a DeviceReadbackGuard (core/device_readback.hpp) the index range check does not read its
// flag back: an out-of-range index then neither throws nor touches memory outside the tensors
// (the kernels skip it); without the guard the same call throws, as on the CPU.
TEST(GatherCuda, ReadbackGuardSkipsTheRangeCheck) {
  KILN_REQUIRE_GPU();
  const auto table = on_gpu(randn<float>({5, 3}));
  const auto bad = on_gpu(Tensor<std::int64_t>::from_vector({1, 7, 2}, {3}));
  EXPECT_KILN_ERROR(index_select(table, 0, bad), "index_select", "7");
  {
    DeviceReadbackGuard trusted;
    EXPECT_FALSE(device_readbacks_enabled());
    const auto out = on_cpu(index_select(table, 0, bad));
    const auto want = on_cpu(index_select(table, 0, on_gpu(Tensor<std::int64_t>::from_vector({1, 2}, {2})))).to_vector();
    const auto got = out.to_vector();
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(got[static_cast<std::size_t>(c)], want[static_cast<std::size_t>(c)]);      // row 0: table[1]
      EXPECT_EQ(got[static_cast<std::size_t>(6 + c)], want[static_cast<std::size_t>(3 + c)]);  // row 2: table[2]
    }
  }
  EXPECT_TRUE(device_readbacks_enabled());
}
