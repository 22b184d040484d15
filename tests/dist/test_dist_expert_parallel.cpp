// Expert parallel MoE through MPI on 2 CPU ranks (mpirun -np 2): nn::MoE built with an exchange
// over the ranks (experts split over them, tokens dispatched and combined with all_to_all_v)
// against nn::MoE in one process on all the tokens — outputs, gradients, balance loss, loads and
// the bias update with the global load — through both dispatch paths (the fused one runs its CPU
// reference loops here); and a DeepseekV3ForCausalLM built expert parallel against one process.
#include "expert_parallel_checks.hpp"

using namespace kiln;
using kiln::dist_test::DistTest;
using kiln::dist_test::EpVariant;
using kiln::dist_test::world;

namespace {

class ExpertParallel : public DistTest {};

TEST_F(ExpertParallel, EqualsOneProcessMoEDouble) {
  dist_test::check_expert_parallel<double>(world(), Device::cpu(), 1e-12, EpVariant::plain);
}

TEST_F(ExpertParallel, EqualsOneProcessMoEFloat) {
  dist_test::check_expert_parallel<float>(world(), Device::cpu(), 1e-5, EpVariant::plain);
}

TEST_F(ExpertParallel, WithDataParallelForTheReplicatedParameters) {
  dist_test::check_expert_parallel<double>(world(), Device::cpu(), 1e-12, EpVariant::data_parallel);
}

TEST_F(ExpertParallel, ARankThatReceivesNoRows) {
  dist_test::check_expert_parallel<double>(world(), Device::cpu(), 1e-12, EpVariant::all_to_rank0);
}

TEST_F(ExpertParallel, FusedDispatchEqualsOneProcessMoE) {
  dist_test::check_expert_parallel<double>(world(), Device::cpu(), 1e-12, EpVariant::plain, nn::MoEDispatch::fused);
  dist_test::check_expert_parallel<double>(world(), Device::cpu(), 1e-12, EpVariant::all_to_rank0,
                                           nn::MoEDispatch::fused);
}

TEST_F(ExpertParallel, WholeModelEqualsOneProcess) {
  dist_test::check_expert_parallel_model<double>(world(), Device::cpu(), 1e-11, nn::MoEDispatch::composed);
}

TEST_F(ExpertParallel, WholeModelFusedDispatchEqualsOneProcess) {
  dist_test::check_expert_parallel_model<double>(world(), Device::cpu(), 1e-11, nn::MoEDispatch::fused);
}

TEST_F(ExpertParallel, RanksWithDifferentLayersGetAnError) {
  ASSERT_EQ(world()->size(), 2) << "the expected messages are written for 2 ranks";
  dist_test::check_expert_parallel_mismatch(world());
}

}  // namespace
