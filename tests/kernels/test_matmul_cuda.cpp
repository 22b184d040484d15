// matmul on CUDA (cuBLASLt, kernels/matmul/matmul.cuh) against kiln's CPU matmul run in float64 on
// the same (rounded) inputs: every shape case, batched and broadcast batches, transposed, narrowed
// and copied layouts, every dtype, TF32 opt-in, the plan cache, another stream, gradients, errors.
// Tolerances (relative Frobenius error, DESIGN.md): float32 1e-5, TF32 5e-4, bfloat16 1e-2;
// float16 1e-3 (three more mantissa bits than bfloat16), float64 1e-12 (summation order only).
#include <kiln/kernels/matmul/cublaslt.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

template <class T>
constexpr double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, fp16>) return 1e-3;
  else return 1e-2;
}

// A GPU tensor of standard normal values, exactly representable in T.
template <class T>
Tensor<T> gpu_randn(const Shape& shape) {
  if constexpr (std::is_same_v<T, double> || std::is_same_v<T, float>) return on_gpu(randn<T>(shape));
  else return on_gpu(cast<T>(randn<float>(shape)));
}

// The float64 CPU product of the values of the GPU tensors a and b (any layout).
template <class T>
Tensor<double> cpu_reference(const Tensor<T>& a, const Tensor<T>& b) {
  return matmul(cast<double>(on_cpu(a)), cast<double>(on_cpu(b)));
}

// The GPU product of a and b (GPU tensors, any layout) against the float64 CPU product.
template <class T>
void expect_matches_cpu(const Tensor<T>& a, const Tensor<T>& b, double tol = tolerance<T>()) {
  SCOPED_TRACE(str(dtype_of<T>, " ", a.shape(), " (strides ", a.strides(), ") · ", b.shape(), " (strides ",
                   b.strides(), ")"));
  const Tensor<T> out = matmul(a, b);
  EXPECT_EQ(out.device(), gpu);
  EXPECT_TRUE(out.is_contiguous());
  const Tensor<double> ref = cpu_reference(a, b);
  ASSERT_EQ(out.shape(), ref.shape());
  EXPECT_LE(relative_error(on_cpu(out), ref), tol);
}

// Calls f(T{}) for every dtype the CUDA matmul supports.
template <class F>
void for_each_dtype(F&& f) {
  f(float{});
  f(double{});
  f(bf16{});
  f(fp16{});
}

template <class T>
void expect_shapes_match_cpu(const Shape& sa, const Shape& sb) {
  expect_matches_cpu(gpu_randn<T>(sa), gpu_randn<T>(sb));
}

// Restores the TF32 setting when a test ends, whatever happens in it.
struct Tf32Setting {
  bool saved = cuda::allow_tf32();
  explicit Tf32Setting(bool allow) { cuda::set_allow_tf32(allow); }
  ~Tf32Setting() { cuda::set_allow_tf32(saved); }
};

using Dims = std::vector<std::int64_t>;

}  // namespace

TEST(MatmulCuda, MatrixTimesMatrixAtOddSizes) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    for (const Dims& mkn : std::vector<Dims>{{1, 1, 1}, {7, 33, 65}, {1, 33, 65}, {33, 1, 7}, {65, 7, 1}, {1003, 65, 1},
                                             {1, 1003, 7}, {64, 64, 64}, {1003, 1003, 1003}, {3, 4099, 5}}) {
      expect_shapes_match_cpu<T>({mkn[0], mkn[1]}, {mkn[1], mkn[2]});
    }
  });
}

TEST(MatmulCuda, Large4096SpotCheck) {
  KILN_REQUIRE_GPU();
  // Full 4096³ products on the GPU; the float64 reference for 8 rows at each end and the middle.
  auto spot_check = [](auto tag, double tol) {
    using T = decltype(tag);
    const std::int64_t n = 4096;
    const Tensor<T> a = gpu_randn<T>({n, n}), b = gpu_randn<T>({n, n});
    const Tensor<T> out = on_cpu(matmul(a, b));
    const Tensor<double> a_cpu = cast<double>(on_cpu(a)), b_cpu = cast<double>(on_cpu(b));
    for (const std::int64_t row : {std::int64_t{0}, n / 2 - 4, n - 8}) {
      SCOPED_TRACE(str(dtype_of<T>, " rows ", row, "..", row + 7));
      const Tensor<double> ref = matmul(narrow(a_cpu, 0, row, 8), b_cpu);
      EXPECT_LE(relative_error(narrow(out, 0, row, 8), ref), tol);
    }
  };
  spot_check(float{}, 1e-5);
  spot_check(bf16{}, 1e-2);
  spot_check(fp16{}, 1e-3);
  Tf32Setting tf32(true);
  spot_check(float{}, 5e-4);
}

TEST(MatmulCuda, VectorOperandsArePromotedThenDropped) {
  KILN_REQUIRE_GPU();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    for (const std::int64_t k : {1, 7, 1003}) {
      expect_shapes_match_cpu<T>({k}, {k});           // dot -> []
      expect_shapes_match_cpu<T>({k}, {k, 5});        // -> [5]
      expect_shapes_match_cpu<T>({6, k}, {k});        // -> [6]
      expect_shapes_match_cpu<T>({k}, {4, 3, k, 5});  // -> [4, 3, 5]
      expect_shapes_match_cpu<T>({2, 3, 6, k}, {k});  // -> [2, 3, 6]
    }
    // Strided vectors: read in place with the stride as the leading dimension.
    expect_matches_cpu(slice(gpu_randn<T>({66}), 0, 0, 66, 2), gpu_randn<T>({33, 9}));
    expect_matches_cpu(gpu_randn<T>({9, 33}), slice(gpu_randn<T>({99}), 0, 1, 99, 3));
  });
  EXPECT_EQ(matmul(gpu_randn<float>({7}), gpu_randn<float>({7})).shape(), Shape{});
  EXPECT_EQ(matmul(gpu_randn<float>({7}), gpu_randn<float>({2, 7, 5})).shape(), (Shape{2, 5}));
}

TEST(MatmulCuda, BatchedAndBroadcastBatches) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    const std::vector<std::pair<Shape, Shape>> cases{
        {{3, 5, 7}, {3, 7, 4}},              // one strided batch
        {{3, 1, 65, 33}, {4, 33, 17}},       // [B,1,M,K]·[H,K,N]: a loop of B strided batches of H
        {{2, 3, 4, 5, 7}, {2, 3, 4, 7, 6}},  // three batch dims, one strided batch of 24
        {{1, 5, 7}, {4, 7, 3}},              // shared left operand (batch stride 0)
        {{5, 7}, {2, 3, 7, 4}},
        {{2, 3, 5, 7}, {7, 4}},              // shared right operand: folded into one GEMM of 30 rows
        {{2, 3, 5, 7}, {1, 1, 7, 4}},
        {{2, 3, 1, 7}, {7, 4}},              // folded, one row per batch element
        {{2, 1, 5, 7}, {1, 3, 7, 4}},        // both broadcast
        {{4, 1, 1, 33}, {1, 33, 1}},         // 1x1 products
        {{1, 1, 65, 130}, {130, 17}},        // a batch of one
        {{64, 33, 65}, {64, 65, 17}},        // many small products
    };
    for (const auto& [sa, sb] : cases) expect_shapes_match_cpu<T>(sa, sb);
    // The benchmark's attention-like shape, scaled down.
    expect_shapes_match_cpu<T>({8, 256, 128}, {8, 128, 256});
  });
  EXPECT_EQ(matmul(gpu_randn<float>({2, 1, 5, 7}), gpu_randn<float>({3, 7, 4})).shape(), (Shape{2, 3, 5, 4}));
}

TEST(MatmulCuda, TransposedNarrowedAndCopiedLayouts) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    // Transposed operands map to cuBLASLt's transpose flags, on either side or both.
    expect_matches_cpu(transpose(gpu_randn<T>({33, 7}), 0, 1), gpu_randn<T>({33, 65}));
    expect_matches_cpu(gpu_randn<T>({7, 33}), transpose(gpu_randn<T>({65, 33}), 0, 1));
    expect_matches_cpu(transpose(gpu_randn<T>({130, 65}), 0, 1), transpose(gpu_randn<T>({17, 130}), 0, 1));
    expect_matches_cpu(transpose(gpu_randn<T>({1003, 1003}), 0, 1), transpose(gpu_randn<T>({1003, 1003}), 0, 1));
    // Batched transposes, and permuted batch dims (not evenly spaced: looped).
    expect_matches_cpu(transpose(gpu_randn<T>({3, 7, 5}), -1, -2), transpose(gpu_randn<T>({3, 4, 7}), -1, -2));
    expect_matches_cpu(permute(gpu_randn<T>({5, 3, 7}), {1, 0, 2}), permute(gpu_randn<T>({7, 3, 4}), {1, 0, 2}));
    expect_matches_cpu(permute(gpu_randn<T>({5, 3, 7}), {1, 0, 2}), gpu_randn<T>({7, 4}));  // no fold: rows not one run
    expect_matches_cpu(transpose(gpu_randn<T>({2, 7, 5}), -1, -2), transpose(gpu_randn<T>({4, 7}), 0, 1));
    // A batch dim expanded with stride 0 is read in place.
    expect_matches_cpu(expand(gpu_randn<T>({1, 5, 7}), {3, 5, 7}), gpu_randn<T>({3, 7, 4}));
    // Narrowed matrices (leading dimension > row length), pointers off the 16-byte boundary.
    expect_matches_cpu(narrow(gpu_randn<T>({7, 40}), 1, 3, 33), narrow(gpu_randn<T>({33, 20}), 1, 1, 17));
    expect_matches_cpu(narrow(gpu_randn<T>({2, 5, 40}), 2, 3, 33), gpu_randn<T>({33, 6}));
    expect_matches_cpu(narrow(gpu_randn<T>({1025}), 0, 1, 1024), gpu_randn<T>({1024, 64}));
    expect_matches_cpu(narrow(gpu_randn<T>({257, 130}), 1, 1, 128), narrow(gpu_randn<T>({129, 256}), 0, 1, 128));
    // Layouts a GEMM cannot read (stepped slices, stride-0 rows): copied first.
    expect_matches_cpu(slice(gpu_randn<T>({7, 66}), 1, 0, 66, 2), slice(gpu_randn<T>({66, 17}), 0, 1, 66, 2));
    expect_matches_cpu(expand(gpu_randn<T>({1, 33}), {7, 33}), expand(gpu_randn<T>({33, 1}), {33, 5}));
  });
}

// matmul_into: the GEMM writing into views of a larger tensor (row stride wider than n, batch
// dims interleaved with the rows, as MLA's decode writes per-head products into [tokens, heads,
// dims]); the elements outside the view keep their values. Views a GEMM cannot write (column
// stride not 1) take the copy path.
template <class T>
void expect_into_matches_cpu(const Tensor<T>& big, const Tensor<T>& out, const Tensor<T>& a, const Tensor<T>& b) {
  SCOPED_TRACE(str(dtype_of<T>, " ", a.shape(), " · ", b.shape(), " into ", out.shape(), " (strides ", out.strides(),
                   ") of ", big.shape()));
  const std::vector<double> before = cast<double>(on_cpu(big)).to_vector();
  matmul_into(out, a, b);
  const Tensor<double> ref = cpu_reference(a, b);
  EXPECT_LE(relative_error(cast<double>(on_cpu(out)), ref), tolerance<T>());
  // Every element outside the view unchanged: mark the view's elements (NaN) in a CPU copy of
  // `before` through the same strides, then compare the unmarked ones exactly.
  const Tensor<double> marks = Tensor<double>::from_vector(before, big.shape());
  copy_into(detail::restride(marks, out.offset() - big.offset(), out.shape(), out.strides()),
            full<double>(out.shape(), std::nan("")));
  const std::vector<double> after = cast<double>(on_cpu(big)).to_vector(), marked = marks.to_vector();
  std::size_t outside_changed = 0, inside = 0;
  for (std::size_t i = 0; i < after.size(); ++i) {
    if (std::isnan(marked[i])) ++inside;
    else outside_changed += after[i] != marked[i];
  }
  EXPECT_EQ(inside, static_cast<std::size_t>(out.numel()));
  EXPECT_EQ(outside_changed, 0u);
}

TEST(MatmulCuda, IntoStridedViews) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    // [n, H, r + dr] written per head from [H, n, dn]·[H, dn, r] (MLA decode's q_lat): batch stride
    // r + dr, row stride H (r + dr); n = 1 and odd sizes too.
    for (const std::int64_t n : {1, 5, 128}) {
      const std::int64_t H = 3, dn = 16, r = 40, dr = 8;
      const Tensor<T> q = gpu_randn<T>({n, H, r + dr});
      expect_into_matches_cpu(q, transpose(narrow(q, -1, 0, r), 0, 1),
                              transpose(gpu_randn<T>({n, H, dn}), 0, 1), gpu_randn<T>({H, dn, r}));
    }
    // [n, H·dv] from [H, n, r]·[H, r, dv] with a transposed right operand (decode's W_UV product).
    const Tensor<T> o = gpu_randn<T>({7, 2 * 24});
    expect_into_matches_cpu(o, transpose(reshape(o, {7, 2, 24}), 0, 1), transpose(gpu_randn<T>({7, 2, 33}), 0, 1),
                            transpose(gpu_randn<T>({2, 24, 33}), -1, -2));
    // A shared right operand (the folded tall GEMM) into every other row of a wider tensor.
    const Tensor<T> wide = gpu_randn<T>({2, 5, 2, 20});
    expect_into_matches_cpu(wide, narrow(squeeze(narrow(wide, 2, 1, 1), 2), -1, 3, 17), gpu_randn<T>({2, 5, 33}),
                            gpu_randn<T>({33, 17}));
    // A column stride of 2: the copy path.
    const Tensor<T> cols = gpu_randn<T>({5, 34});
    expect_into_matches_cpu(cols, slice(cols, 1, 0, 34, 2), gpu_randn<T>({5, 9}), gpu_randn<T>({9, 17}));
  });
  EXPECT_KILN_ERROR(matmul_into(on_gpu(zeros<float>({3, 5})), gpu_randn<float>({3, 4}), gpu_randn<float>({4, 6})),
                    "matmul_into", "[3, 5]", "[3, 6]");
}

// matmul_add on the GPU: the addend in the GEMM's epilogue (beta = 1), for the folded tall GEMM of
// a linear layer (decode's o_proj and the experts' down projection with their residual), a strided
// batch, a transposed weight; against the float64 CPU c + a·b. With gradients: the composed path.
TEST(MatmulCuda, AddInTheEpilogue) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    const std::vector<std::pair<Shape, Shape>> cases{
        {{128, 1, 768}, {768, 96}}, {{7, 1, 33}, {33, 17}}, {{3, 5, 7}, {3, 7, 4}}, {{1, 9}, {9, 130}}};
    for (const auto& [sa, sb] : cases) {
      const Tensor<T> a = gpu_randn<T>(sa), b = gpu_randn<T>(sb);
      Shape sc = sa;
      sc.back() = sb.back();
      const Tensor<T> c = gpu_randn<T>(sc);
      SCOPED_TRACE(str(dtype_of<T>, " ", sa, " · ", sb));
      const Tensor<T> out = matmul_add(a, b, c);
      const Tensor<double> ref = add(cast<double>(on_cpu(c)), cpu_reference(a, b));
      EXPECT_LE(relative_error(cast<double>(on_cpu(out)), ref), tolerance<T>());
    }
    // A transposed weight (nn::Linear::forward_add): x · Wᵀ + residual.
    const Tensor<T> x = gpu_randn<T>({5, 1, 48}), w = gpu_randn<T>({24, 48}), r = gpu_randn<T>({5, 1, 24});
    EXPECT_LE(relative_error(cast<double>(on_cpu(matmul_add(x, transpose(w, 0, 1), r))),
                             add(cast<double>(on_cpu(r)), cpu_reference(x, transpose(w, 0, 1)))),
              tolerance<T>());
  });
  const Tensor<float> a = gpu_randn<float>({3, 4}).requires_grad_(), b = gpu_randn<float>({4, 2}),
                      c = gpu_randn<float>({3, 2}).requires_grad_();
  sum(matmul_add(a, b, c)).backward();
  EXPECT_LE(relative_error(on_cpu(c.grad()), ones<float>({3, 2})), 0.0);
  EXPECT_LE(relative_error(on_cpu(a.grad()), cpu_reference(ones<float>({3, 2}), transpose(on_cpu(b), 0, 1))), 1e-5);
}

TEST(MatmulCuda, EmptyOperandsAndEmptySums) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();  // an output left unwritten would read as NaN
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    expect_shapes_match_cpu<T>({0, 5}, {5, 3});
    expect_shapes_match_cpu<T>({4, 5}, {5, 0});
    expect_shapes_match_cpu<T>({0, 4, 5}, {5, 3});
    expect_shapes_match_cpu<T>({4, 0}, {0, 3});  // sums of nothing: zeros
    expect_shapes_match_cpu<T>({2, 4, 0}, {2, 0, 3});
  });
  const auto zero_k = on_cpu(matmul(gpu_randn<float>({4, 0}), gpu_randn<float>({0, 3})));
  for (float v : zero_k.to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(on_cpu(matmul(gpu_randn<double>({0}), gpu_randn<double>({0}))).item(), 0.0);
}

TEST(MatmulCuda, Tf32IsOptInAndWithinItsTolerance) {
  KILN_REQUIRE_GPU();
  EXPECT_FALSE(cuda::allow_tf32());  // off unless asked for
  const Tensor<float> a = gpu_randn<float>({1003, 1003}), b = gpu_randn<float>({1003, 1003});
  expect_matches_cpu(a, b, 1e-5);
  {
    Tf32Setting tf32(true);
    EXPECT_TRUE(cuda::allow_tf32());
    expect_matches_cpu(a, b, 5e-4);
    expect_matches_cpu(transpose(a, 0, 1), b, 5e-4);
    expect_matches_cpu(gpu_randn<float>({3, 1, 65, 33}), gpu_randn<float>({4, 33, 17}), 5e-4);
  }
  // Switched off again: the full-FP32 plan, not the TF32 one.
  EXPECT_FALSE(cuda::allow_tf32());
  expect_matches_cpu(a, b, 1e-5);
}

TEST(MatmulCuda, PlansAreCachedAndNothingIsAllocatedAfterWarmUp) {
  KILN_REQUIRE_GPU();
  const Tensor<bf16> a = gpu_randn<bf16>({2, 300, 200}), b = gpu_randn<bf16>({2, 200, 100});
  (void)matmul(a, b);  // plans and warms up
  cuda::synchronize();
  const std::size_t plans = cuda::lt_plan_count();
  const std::size_t allocations = cuda::memory_stats().device_allocations;
  for (int i = 0; i < 10; ++i) {
    const Tensor<bf16> again = matmul(a, b);
    EXPECT_EQ(again.shape(), (Shape{2, 300, 100}));
  }
  cuda::synchronize();
  EXPECT_EQ(cuda::lt_plan_count(), plans);
  EXPECT_EQ(cuda::memory_stats().device_allocations, allocations);  // outputs from the cache, workspace kept
  EXPECT_LE(relative_error(on_cpu(matmul(a, b)), cpu_reference(a, b)), 1e-2);
  // A new problem (b transposed) is planned once, then found.
  (void)matmul(a, transpose(gpu_randn<bf16>({2, 100, 200}), -1, -2));
  const std::size_t after = cuda::lt_plan_count();
  EXPECT_EQ(after, plans + 1);
  (void)matmul(a, transpose(gpu_randn<bf16>({2, 100, 200}), -1, -2));
  EXPECT_EQ(cuda::lt_plan_count(), after);
}

TEST(MatmulCuda, RunsOnTheStreamOfAStreamGuard) {
  KILN_REQUIRE_GPU();
  const Tensor<float> a = gpu_randn<float>({3, 129, 257}), b = gpu_randn<float>({257, 65});
  cudaStream_t stream = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    cuda::StreamGuard guard(0, stream);
    expect_matches_cpu(a, b);  // its own workspace; results read back on that stream
    expect_matches_cpu(transpose(gpu_randn<float>({65, 33}), 0, 1), gpu_randn<float>({65, 17}));
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  expect_matches_cpu(a, b);
  KILN_CUDA_CHECK(cudaStreamDestroy(stream));
}

namespace {

// Runs out.backward(g) for matmul(a, b) with GPU leaves in T and CPU leaves in double on the same
// values; compares the gradients. a_gpu and b_gpu may be non-contiguous views (leaves).
template <class T>
void expect_grads_match_cpu(Tensor<T> a, Tensor<T> b, double tol = tolerance<T>()) {
  SCOPED_TRACE(str(dtype_of<T>, " grads of ", a.shape(), " · ", b.shape()));
  Tensor<double> a_ref = cast<double>(on_cpu(a)).detach(), b_ref = cast<double>(on_cpu(b)).detach();
  a.requires_grad_();
  b.requires_grad_();
  a_ref.requires_grad_();
  b_ref.requires_grad_();
  const Tensor<T> out = matmul(a, b);
  const Tensor<double> out_ref = matmul(a_ref, b_ref);
  const Tensor<T> g = gpu_randn<T>(out.shape());
  out.backward(g);
  out_ref.backward(cast<double>(on_cpu(g)));
  ASSERT_TRUE(a.grad().defined());
  ASSERT_TRUE(b.grad().defined());
  EXPECT_EQ(a.grad().device(), gpu);
  EXPECT_EQ(a.grad().shape(), a.shape());
  EXPECT_EQ(b.grad().shape(), b.shape());
  EXPECT_LE(relative_error(on_cpu(a.grad()), a_ref.grad()), tol);
  EXPECT_LE(relative_error(on_cpu(b.grad()), b_ref.grad()), tol);
}

}  // namespace

TEST(MatmulCuda, BackwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  // Shapes whose gradients need no reduction over broadcast batch dims (only matmuls and views).
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    const std::vector<std::pair<Shape, Shape>> cases{
        {{3, 7}, {7, 5}}, {{1, 1}, {1, 1}}, {{7}, {7, 5}}, {{3, 7}, {7}}, {{7}, {7}}, {{2, 3, 7}, {7}},
        {{2, 3, 4}, {2, 4, 5}},
        {{2, 3, 33}, {33, 17}},  // shared right operand: dB as one folded product
        {{65, 1003}, {1003, 129}},
    };
    for (const auto& [sa, sb] : cases) expect_grads_match_cpu(gpu_randn<T>(sa), gpu_randn<T>(sb));
    // Non-contiguous leaves.
    expect_grads_match_cpu(transpose(gpu_randn<T>({5, 3}), 0, 1).detach(),
                           transpose(gpu_randn<T>({4, 5}), 0, 1).detach());
    expect_grads_match_cpu(permute(gpu_randn<T>({3, 2, 4}), {1, 0, 2}).detach(), gpu_randn<T>({4, 5}));
    expect_grads_match_cpu(slice(gpu_randn<T>({3, 10}), 1, 0, 10, 2).detach(), gpu_randn<T>({5, 4}));
  });
}

// A residual block x + x·W: x's gradient from the add arrives first and matmul's backward folds it
// into dx in the GEMM's epilogue (matmul_add, beta = 1: autograd's InputGrads::received); against
// float64 on the CPU, every dtype, with a weight shared over a batch and a lone matrix.
TEST(MatmulCuda, BackwardFoldsTheGradientReceivedBefore) {
  KILN_REQUIRE_GPU();
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    const std::vector<std::pair<Shape, Shape>> cases{{{2, 3, 33}, {33, 33}}, {{65, 129}, {129, 129}}};
    for (const auto& [sx, sw] : cases) {
      SCOPED_TRACE(str(dtype_of<T>, " ", sx, " · ", sw));
      const Tensor<T> x = gpu_randn<T>(sx), w = gpu_randn<T>(sw), g = gpu_randn<T>(sx);
      auto xg = x.detach().requires_grad_();
      auto xd = cast<double>(on_cpu(x)).requires_grad_();
      add(xg, matmul(xg, w)).backward(g);
      add(xd, matmul(xd, cast<double>(on_cpu(w)))).backward(cast<double>(on_cpu(g)));
      EXPECT_LE(relative_error(cast<double>(on_cpu(xg.grad())), xd.grad()), tolerance<T>());
    }
  });
}

TEST(MatmulCuda, BackwardSumsBroadcastBatches) {
  KILN_REQUIRE_GPU();
  // These gradients sum over broadcast batch dims (sum_to): they need kiln::sum on the device.
  for_each_dtype([](auto tag) {
    using T = decltype(tag);
    const std::vector<std::pair<Shape, Shape>> cases{
        {{7}, {2, 7, 3}}, {{2, 1, 3, 4}, {3, 4, 2}}, {{2, 3, 4}, {1, 4, 5}}, {{3, 4}, {2, 4, 5}},
        {{1, 3, 4}, {2, 1, 4, 5}},
    };
    for (const auto& [sa, sb] : cases) expect_grads_match_cpu(gpu_randn<T>(sa), gpu_randn<T>(sb));
  });
}

TEST(MatmulCuda, ErrorsNameOpShapesAndDevices) {
  KILN_REQUIRE_GPU();
  const auto a8 = on_gpu(cast<fp8_e4m3>(randn<float>({2, 3})));
  const auto b8 = on_gpu(cast<fp8_e4m3>(randn<float>({3, 4})));
  EXPECT_KILN_ERROR(matmul(a8, b8), "matmul", "float8_e4m3", "cuda:0", "[2, 3]", "[3, 4]");
  EXPECT_KILN_ERROR(matmul(randn<float>({2, 3}), gpu_randn<float>({3, 4})), "matmul", "different devices", "cpu",
                    "cuda:0", "[2, 3]", "[3, 4]");
  EXPECT_KILN_ERROR(matmul(gpu_randn<float>({2, 3}), gpu_randn<float>({4, 5})), "matmul", "[2, 3]", "[4, 5]",
                    "inner dimensions 3 and 4 differ");
  EXPECT_KILN_ERROR(matmul(gpu_randn<bf16>({2, 3, 4}), gpu_randn<bf16>({5, 4, 6})), "matmul", "[2, 3, 4]",
                    "[5, 4, 6]", "cannot be broadcast");
  // The device still works afterwards.
  expect_shapes_match_cpu<float>({3, 4}, {4, 5});
}
