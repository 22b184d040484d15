// The collectives through NCCL, one GPU per rank (mpirun -np 2; skipped with fewer than 2 GPUs):
// the same checks as test_dist_collectives.cpp on GPU tensors, plus a CPU tensor handed to NCCL.
#include "collective_checks.hpp"
#include "nccl_test.hpp"

using namespace kiln;
using kiln::dist_test::gpu;
using kiln::dist_test::nccl_world;
using kiln::dist_test::NcclTest;

namespace {

class NcclCollectives : public NcclTest {};

TEST_F(NcclCollectives, AllReduceSumAndMaxEveryType) {
  dist_test::check_all_reduce<float>(*nccl_world(), gpu());
  dist_test::check_all_reduce<double>(*nccl_world(), gpu());
  dist_test::check_all_reduce<bf16>(*nccl_world(), gpu());
  dist_test::check_all_reduce<fp16>(*nccl_world(), gpu());
  dist_test::check_all_reduce<std::int32_t>(*nccl_world(), gpu());
  dist_test::check_all_reduce<std::int64_t>(*nccl_world(), gpu());
}

TEST_F(NcclCollectives, AgainstHandComputedValues) {
  dist_test::check_collectives<float>(*nccl_world(), gpu());
  dist_test::check_collectives<double>(*nccl_world(), gpu());
  dist_test::check_collectives<bf16>(*nccl_world(), gpu());
}

TEST_F(NcclCollectives, AllToAllGradientIsTheReverseAllToAll) {
  dist_test::check_all_to_all_gradient(*nccl_world(), gpu());
}

TEST_F(NcclCollectives, DisagreeingRanksGetTheSameError) {
  ASSERT_EQ(nccl_world()->size(), 2) << "the expected messages are written for 2 ranks";
  dist_test::check_disagreements(*nccl_world(), gpu());
  // A CPU tensor on one rank only.
  const Device where = nccl_world()->rank() == 1 ? Device::cpu() : gpu();
  EXPECT_KILN_ERROR(dist::all_reduce(*nccl_world(), zeros<float>({2}, where)), "dist::all_reduce",
                    "rank 1 passed a tensor on cpu to a nccl communicator");
}

TEST_F(NcclCollectives, NonBlockingAllReduceOverlapsAndOrders) {
  // start_all_reduce on the side stream after the queued work, then wait(): kiln's stream sees it.
  auto& comm = *nccl_world();
  Tensor<float> t = full<float>({1 << 20}, static_cast<float>(comm.rank() + 1), gpu());
  auto work = comm.start_all_reduce(t.data(), t.numel(), DType::f32, dist::ReduceOp::sum);
  work->wait();
  const Tensor<float> doubled = mul(t, 2.0);
  const float want = 2.0f * static_cast<float>(comm.size() * (comm.size() + 1) / 2);
  const auto v = doubled.to_vector();
  EXPECT_EQ(v.front(), want);
  EXPECT_EQ(v.back(), want);
  EXPECT_TRUE(work->test());
}

TEST_F(NcclCollectives, SplitGivesAnIndependentCommunicator) {
  auto dup = nccl_world()->split(0, nccl_world()->rank());
  EXPECT_EQ(dup->size(), nccl_world()->size());
  Tensor<float> t = full<float>({3}, 1.0f, gpu());
  dist::all_reduce(*dup, t);
  EXPECT_EQ(t.to_vector(), (std::vector<float>(3, static_cast<float>(dup->size()))));
}

}  // namespace
