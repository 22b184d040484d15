// The CUDA runtime under kiln: transfers, the caching allocator, streams, error reporting.
// Compiled by g++ and linked with the nvcc-compiled backend (the kiln_cuda_backend library: cmake/CudaBackend.cmake).
#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

TEST(CudaRuntime, RoundTripCopiesEveryByte) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : {1, 7, 33, 1003, (8 << 20) / 4 + 5, (20 << 20) / 4}) {  // across pinned chunk edges
    auto x = randn<float>({n});
    auto g = on_gpu(x);
    EXPECT_EQ(g.device(), gpu);
    EXPECT_EQ(on_cpu(g).to_vector(), x.to_vector()) << n;
  }
  // Non-contiguous CPU source, device-to-device copy, element access on the device.
  auto m = randn<double>({33, 17});
  auto t = transpose(m, 0, 1);
  auto gt = on_gpu(t);
  EXPECT_EQ(gt.to_vector(), t.to_vector());
  EXPECT_EQ(gt.at({16, 32}), m.at({32, 16}));
  auto copy = clone(gt);
  EXPECT_NE(copy.data(), gt.data());
  EXPECT_EQ(copy.to_vector(), t.to_vector());
}

TEST(CudaRuntime, AllocatorReusesFreedBlocks) {
  KILN_REQUIRE_GPU();
  cuda::synchronize();
  void* first;
  {
    Tensor<float> a({1 << 20}, gpu);
    first = a.data();
  }
  const auto before = cuda::memory_stats();
  {
    Tensor<float> b({1 << 20}, gpu);
    EXPECT_EQ(b.data(), first);  // the same block, no new cudaMalloc
  }
  EXPECT_EQ(cuda::memory_stats().device_allocations, before.device_allocations);
  EXPECT_GT(cuda::memory_stats().cached, 0u);
  cuda::empty_cache();
  EXPECT_EQ(cuda::memory_stats().cached, 0u);
  EXPECT_EQ(cuda::CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(cuda::CachingAllocator::round_size((1 << 20) + 1), 2u << 20);
}

TEST(CudaRuntime, OutOfMemoryIsAClearError) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR((Tensor<float>({std::int64_t(1) << 42}, gpu)), "cudaMalloc", "bytes on cuda:0");
  // The device still works afterwards.
  EXPECT_EQ(on_cpu(on_gpu(tensor<float>({1, 2}))).to_vector(), (std::vector<float>{1, 2}));
}

TEST(CudaRuntime, MixingDevicesIsAnError) {
  KILN_REQUIRE_GPU();
  EXPECT_KILN_ERROR(add(zeros<float>({2}), zeros<float>({2}, gpu)), "kiln::add", "cpu", "cuda:0");
  EXPECT_KILN_ERROR(on_gpu(zeros<float>({2})).at({5}), "at", "out of range");
}

TEST(CudaRuntime, BinaryOpsMatchTheCpu) {
  KILN_REQUIRE_GPU();
  poison_cached_memory();
  for (auto shapes : std::vector<std::pair<Shape, Shape>>{{{1}, {1}}, {{7}, {7}}, {{33, 65}, {65}}, {{1003, 1}, {3, 1, 129}},
                                                          {{4096, 4099}, {4096, 4099}}}) {
    auto a = randn<float>(shapes.first), b = add(rand<float>(shapes.second), 0.5);
    auto ga = on_gpu(a), gb = on_gpu(b);
    EXPECT_EQ(relative_error(on_cpu(add(ga, gb)), add(a, b)), 0.0);
    EXPECT_EQ(relative_error(on_cpu(mul(ga, gb)), mul(a, b)), 0.0);
    EXPECT_EQ(relative_error(on_cpu(sub(ga, gb)), sub(a, b)), 0.0);
    EXPECT_LE(relative_error(on_cpu(div(ga, gb)), div(a, b)), 1e-7);
    EXPECT_EQ(relative_error(on_cpu(maximum(ga, gb)), maximum(a, b)), 0.0);
  }
  // Non-contiguous operands take the strided path.
  auto a = randn<double>({65, 33});
  auto b = randn<double>({33, 65});
  EXPECT_EQ(relative_error(on_cpu(add(transpose(on_gpu(a), 0, 1), on_gpu(b))), add(transpose(a, 0, 1), b)), 0.0);
  // bf16 computes in float and rounds like the CPU.
  auto x = cast<bf16>(randn<float>({1001})), y = cast<bf16>(randn<float>({1001}));
  auto gx = on_gpu(x), gy = on_gpu(y);
  const auto gpu_v = on_cpu(mul(gx, gy)).to_vector(), cpu_v = mul(x, y).to_vector();
  for (std::size_t i = 0; i < gpu_v.size(); ++i) ASSERT_EQ(gpu_v[i].bits, cpu_v[i].bits) << i;
}

// The gradient through to(): a device copy passes the upstream gradient back, to the source's
// device, unchanged. Hand-computed: L = sum(w ⊙ to_cpu(to_gpu(x)²)) gives dL/dx = 2·w ⊙ x, with the
// square computed on the GPU (the gradient crosses both copies). Exact: the GPU forms w·x twice and
// adds the two (x·x has two uses of x), and w·x + w·x is 2·(w·x) without rounding, as is the
// reference (x·w)·2; a copy that lost, scaled or misplaced any element would show.
TEST(CudaRuntime, GradientFlowsThroughDeviceCopies) {
  KILN_REQUIRE_GPU();
  for (const Shape& shape : {Shape{1}, Shape{37, 5}, Shape{3, 1, 129}}) {
    const auto x = randn<float>(shape).requires_grad_();
    const auto w = randn<float>(shape);
    const auto g = on_gpu(x);
    ASSERT_TRUE(g.requires_grad());
    const auto back = on_cpu(mul(g, g));
    sum(mul(back, w)).backward();
    ASSERT_TRUE(x.grad().defined());
    EXPECT_EQ(x.grad().device(), Device::cpu());
    const auto want = mul(mul(x.detach(), w), 2.0f);
    EXPECT_EQ(relative_error(x.grad(), want), 0.0) << str(shape);
    // A non-contiguous source (transposed) and a GPU leaf whose gradient comes back from the CPU.
    const auto m = randn<double>({6, 9}).requires_grad_();
    sum(mul(on_gpu(transpose(m, 0, 1)), 3.0)).backward();
    EXPECT_EQ(m.grad().to_vector(), std::vector<double>(54, 3.0));
    const auto leaf = on_gpu(randn<double>(shape)).requires_grad_();
    sum(mul(on_cpu(leaf), on_cpu(leaf))).backward();
    ASSERT_EQ(leaf.grad().device(), gpu);
    EXPECT_EQ(on_cpu(leaf.grad()).to_vector(), mul(on_cpu(leaf.detach()), 2.0).to_vector());
  }
}
