// Data parallel training through NCCL, one GPU per rank (mpirun -np 2; skipped with fewer than 2
// GPUs): the checks of test_dist_data_parallel.cpp on GPU tensors — bucketed all-reduce on a side
// stream during backward, ZeRO-1, against one process on the whole batch on the same GPU.
#include "data_parallel_checks.hpp"
#include "nccl_test.hpp"

using namespace kiln;
using kiln::dist_test::DpRun;
using kiln::dist_test::gpu;
using kiln::dist_test::nccl_world;
using kiln::dist_test::NcclTest;

namespace {

class NcclDataParallel : public NcclTest {};

TEST_F(NcclDataParallel, GradientsEqualOneProcessOnTheWholeBatch) {
  dist_test::check_gradients_equal_single<double>(nccl_world(), gpu(), 1e-12);
  dist_test::check_gradients_equal_single<float>(nccl_world(), gpu(), 1e-5);
}

TEST_F(NcclDataParallel, StepEqualsOneProcessOnTheWholeBatchDouble) {
  dist_test::check_data_parallel_equals_single<double>(nccl_world(), gpu(), 1e-11, DpRun{});
}

TEST_F(NcclDataParallel, StepEqualsOneProcessOnTheWholeBatchFloat) {
  dist_test::check_data_parallel_equals_single<float>(nccl_world(), gpu(), 1e-5, DpRun{});
}

TEST_F(NcclDataParallel, GradientAccumulationAndClipping) {
  DpRun run;
  run.micro_batches = 2;
  dist_test::check_data_parallel_equals_single<double>(nccl_world(), gpu(), 1e-11, run);
  run.micro_batches = 1;
  run.clip = 0.05;
  dist_test::check_data_parallel_equals_single<double>(nccl_world(), gpu(), 1e-11, run);
}

TEST_F(NcclDataParallel, ZeroBf16MatchesUnshardedBitForBit) { dist_test::check_zero_bf16(nccl_world(), gpu()); }

TEST_F(NcclDataParallel, DeepSeekV3WithGlobalExpertLoad) {
  dist_test::check_deepseek_data_parallel<double>(nccl_world(), gpu(), 1e-10, false);
  dist_test::check_deepseek_data_parallel<double>(nccl_world(), gpu(), 1e-10, true);
}

TEST_F(NcclDataParallel, RanksWithDifferentParametersGetAnError) {
  ASSERT_EQ(nccl_world()->size(), 2) << "the expected messages are written for 2 ranks";
  dist_test::check_parameter_mismatch(nccl_world(), gpu());
}

}  // namespace
