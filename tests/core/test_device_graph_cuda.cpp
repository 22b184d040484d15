// DeviceGraph (core/device_graph.hpp) on CUDA: a captured function replays with fresh inputs copied
// into its input tensors and gives what running it eagerly gives; its warm-up run is a real run;
// temporaries allocated inside stay reserved for the graph (eager work between replays cannot
// overwrite them); a function that reads a result back cannot be captured (clear error, and the
// stream is restored); on the CPU capture runs the function and replay runs it again.
#include <kiln/core/device_graph.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// y = softmax(x @ w + 1) row sums of squares: several kernels and temporaries.
Tensor<float> step(const Tensor<float>& x, const Tensor<float>& w) {
  const Tensor<float> h = softmax(add(matmul(x, w), 1.0), -1);
  return sum(mul(h, h), {1});
}

void copy_into(const Tensor<float>& dst, const Tensor<float>& src) {
  copy_bytes(dst.data(), dst.device(), src.data(), src.device(), sizeof(float) * static_cast<std::size_t>(src.numel()));
}

TEST(DeviceGraphCuda, ReplaysWithFreshInputs) {
  KILN_REQUIRE_GPU();
  manual_seed(71);
  const Tensor<float> w = on_gpu(randn<float>({64, 96}));
  const Tensor<float> x = on_gpu(randn<float>({33, 64}));  // the graph's input: refilled before replays
  Tensor<float> y;                                        // its output: assigned inside the capture
  DeviceGraph graph;
  graph.capture(gpu, [&] { y = step(x, w); });
  ASSERT_TRUE(graph.captured());
  // The warm-up run's result is there already.
  EXPECT_LT(relative_error(on_cpu(y), on_cpu(step(x, w))), 1e-6);
  for (int i = 0; i < 5; ++i) {
    const Tensor<float> fresh = randn<float>({33, 64});
    copy_into(x, fresh);
    graph.replay();
    // Eager work between replays allocates and writes memory: it must not land in the graph's blocks.
    const Tensor<float> noise = on_gpu(randn<float>({33, 96}));
    const Tensor<float> eager = step(on_gpu(fresh), w);
    EXPECT_LT(relative_error(on_cpu(y), on_cpu(eager)), 1e-6) << "replay " << i;
    (void)noise;
  }
}

TEST(DeviceGraphCuda, ReadbackInsideIsRefused) {
  KILN_REQUIRE_GPU();
  const Tensor<float> x = on_gpu(randn<float>({8, 8}));
  DeviceGraph graph;
  float seen = 0;
  EXPECT_KILN_ERROR(graph.capture(gpu, [&] { seen = sum(x).item(); }), "DeviceGraph");
  EXPECT_FALSE(graph.captured());
  // The thread's stream is back to normal: eager ops work and read back.
  EXPECT_NEAR(sum(x).item(), sum(on_cpu(x)).item(), 1e-4);
  (void)seen;
}

// An upload inside the function works in the warm-up run but not in the recording: the capture
// fails with kiln::Error (not a CUDA error later), and host copies work afterwards.
TEST(DeviceGraphCuda, UploadInsideIsRefusedAndCopiesStillWork) {
  KILN_REQUIRE_GPU();
  const Tensor<float> host = randn<float>({1000});
  Tensor<float> y;
  DeviceGraph graph;
  EXPECT_KILN_ERROR(graph.capture(gpu, [&] { y = on_gpu(host); }), "DeviceGraph");
  EXPECT_FALSE(graph.captured());
  EXPECT_EQ(on_cpu(on_gpu(host)).to_vector(), host.to_vector());
  EXPECT_NEAR(sum(on_gpu(host)).item(), sum(host).item(), 1e-3);
}

TEST(DeviceGraph, CpuRunsTheFunction) {
  int runs = 0;
  DeviceGraph graph;
  graph.capture(Device::cpu(), [&] { ++runs; });
  EXPECT_EQ(runs, 1);
  graph.replay();
  graph.replay();
  EXPECT_EQ(runs, 3);
}

}  // namespace
