// Data parallel training through MPI on 2 CPU ranks (mpirun -np 2): bucketed all-reduce during
// backward and ZeRO-1 against one process on the whole batch, after a few AdamW steps; gradient
// accumulation, clipping, parameters used by one rank or none, bf16 ZeRO, a DeepSeek-V3 model
// with the global expert load, the bucket layout and the errors.
#include <kiln/dist/buckets.hpp>

#include "data_parallel_checks.hpp"

using namespace kiln;
using kiln::dist_test::DistTest;
using kiln::dist_test::DpRun;
using kiln::dist_test::world;

namespace {

class DataParallel : public DistTest {};

// The engine hook DataParallel relies on (autograd/node.hpp, Node::post_hooks): on a leaf's
// AccumulateGrad it runs once per backward, after the leaf's whole gradient has arrived, and
// stops once removed.
TEST(PostHooks, RunOnceWithTheCompleteGradient) {
  Tensor<double> w = Tensor<double>::from_vector({1.0, 2.0}, {2});
  w.requires_grad_();
  std::vector<std::vector<double>> seen;
  const auto node = autograd::edge_of(w);
  const auto hook = std::make_shared<const autograd::Node::Hook>([&] { seen.push_back(w.grad().to_vector()); });
  node->post_hooks.push_back(hook);
  // w feeds the loss along two paths: 3·Σw + Σw² -> gradient 3 + 2w.
  add(mul(sum(w), 3.0), sum(mul(w, w))).backward();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<double>{5.0, 7.0}));
  w.zero_grad();
  sum(w).backward();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], (std::vector<double>{1.0, 1.0}));
  std::erase(node->post_hooks, hook);
  sum(w).backward();
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Buckets, ReverseOrderCappedAndPadded) {
  // Parameters of 5, 3, 10, 2, 2 elements, buckets of 6, padded to 4.
  const auto b = dist::make_buckets({5, 3, 10, 2, 2}, 6, 4);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[0].entries.size(), 2u);  // params 4, 3
  EXPECT_EQ(b[0].entries[0].param, 4u);
  EXPECT_EQ(b[0].entries[1].param, 3u);
  EXPECT_EQ(b[0].entries[1].offset, 2);
  EXPECT_EQ(b[0].numel, 4);
  EXPECT_EQ(b[0].padded, 4);
  EXPECT_EQ(b[1].entries[0].param, 2u);  // larger than a bucket: alone
  EXPECT_EQ(b[1].padded, 12);
  EXPECT_EQ(b[2].entries[0].param, 1u);
  EXPECT_EQ(b[3].entries[0].param, 0u);  // 3 + 5 > 6
  EXPECT_EQ(b[3].padded, 8);
}

TEST_F(DataParallel, GradientsEqualOneProcessOnTheWholeBatch) {
  dist_test::check_gradients_equal_single<double>(world(), Device::cpu(), 1e-14);
  dist_test::check_gradients_equal_single<float>(world(), Device::cpu(), 1e-6);
}

TEST_F(DataParallel, StepEqualsOneProcessOnTheWholeBatchDouble) {
  dist_test::check_data_parallel_equals_single<double>(world(), Device::cpu(), 1e-12, DpRun{});
}

TEST_F(DataParallel, StepEqualsOneProcessOnTheWholeBatchFloat) {
  dist_test::check_data_parallel_equals_single<float>(world(), Device::cpu(), 1e-5, DpRun{});
}

TEST_F(DataParallel, OneBucketForEverything) {
  DpRun run;
  run.bucket_bytes = std::int64_t(25) << 20;
  dist_test::check_data_parallel_equals_single<double>(world(), Device::cpu(), 1e-12, run);
}

TEST_F(DataParallel, GradientAccumulation) {
  DpRun run;
  run.micro_batches = 2;
  dist_test::check_data_parallel_equals_single<double>(world(), Device::cpu(), 1e-12, run);
  run.plain_backward = true;
  dist_test::check_data_parallel_equals_single<double>(world(), Device::cpu(), 1e-12, run);
}

TEST_F(DataParallel, Clipping) {
  DpRun run;
  run.clip = 0.05;  // below the gradient norms of these steps: every step clips
  dist_test::check_data_parallel_equals_single<double>(world(), Device::cpu(), 1e-12, run);
}

TEST_F(DataParallel, ZeroBf16MatchesUnshardedBitForBit) { dist_test::check_zero_bf16(world(), Device::cpu()); }

TEST_F(DataParallel, DeepSeekV3WithGlobalExpertLoad) {
  dist_test::check_deepseek_data_parallel<double>(world(), Device::cpu(), 1e-11, false);
}

TEST_F(DataParallel, DeepSeekV3ZeroWithGlobalExpertLoad) {
  dist_test::check_deepseek_data_parallel<double>(world(), Device::cpu(), 1e-11, true);
}

TEST_F(DataParallel, RanksWithDifferentParametersGetAnError) {
  ASSERT_EQ(world()->size(), 2) << "the expected messages are written for 2 ranks";
  dist_test::check_parameter_mismatch(world(), Device::cpu());
}

}  // namespace
