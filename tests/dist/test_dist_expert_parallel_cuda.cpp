// Expert parallel MoE through NCCL, one GPU per rank (mpirun -np 2; skipped with fewer than 2
// GPUs): the checks of test_dist_expert_parallel.cpp with the all-to-alls as NCCL send/receive
// groups, against nn::MoE in one process on the same GPU.
#include "expert_parallel_checks.hpp"
#include "nccl_test.hpp"

using namespace kiln;
using kiln::dist_test::EpVariant;
using kiln::dist_test::gpu;
using kiln::dist_test::nccl_world;
using kiln::dist_test::NcclTest;

namespace {

class NcclExpertParallel : public NcclTest {};

TEST_F(NcclExpertParallel, EqualsOneProcessMoEDouble) {
  dist_test::check_expert_parallel<double>(nccl_world(), gpu(), 1e-12, EpVariant::plain);
}

TEST_F(NcclExpertParallel, EqualsOneProcessMoEFloat) {
  dist_test::check_expert_parallel<float>(nccl_world(), gpu(), 1e-5, EpVariant::plain);
}

TEST_F(NcclExpertParallel, WithDataParallelForTheReplicatedParameters) {
  dist_test::check_expert_parallel<double>(nccl_world(), gpu(), 1e-12, EpVariant::data_parallel);
}

TEST_F(NcclExpertParallel, WholeModelFusedDispatchBf16) {
  // bf16 through the sync-free kernels and the grouped GEMM (the layer check's hidden 6 is not a
  // grouped GEMM size; the model's 16 is). bf16 rounding differs with the summation order.
  dist_test::check_expert_parallel_model<bf16>(nccl_world(), gpu(), 3e-2, nn::MoEDispatch::fused);
}

TEST_F(NcclExpertParallel, WholeModelEqualsOneProcess) {
  dist_test::check_expert_parallel_model<double>(nccl_world(), gpu(), 1e-11, nn::MoEDispatch::composed);
}

TEST_F(NcclExpertParallel, ARankThatReceivesNoRows) {
  dist_test::check_expert_parallel<double>(nccl_world(), gpu(), 1e-12, EpVariant::all_to_rank0);
}

}  // namespace
