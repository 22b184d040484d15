// The collectives through MPI on 2 CPU ranks (mpirun -np 2): values against hand-computed ones,
// every element type that reduces, the all-to-all's gradient, and the errors when ranks disagree.
#include "collective_checks.hpp"

using namespace kiln;
using kiln::dist_test::DistTest;
using kiln::dist_test::world;

namespace {

class Collectives : public DistTest {};

TEST_F(Collectives, AllReduceSumAndMaxEveryType) {
  dist_test::check_all_reduce<float>(*world(), Device::cpu());
  dist_test::check_all_reduce<double>(*world(), Device::cpu());
  dist_test::check_all_reduce<bf16>(*world(), Device::cpu());
  dist_test::check_all_reduce<fp16>(*world(), Device::cpu());
  dist_test::check_all_reduce<std::int32_t>(*world(), Device::cpu());
  dist_test::check_all_reduce<std::int64_t>(*world(), Device::cpu());
}

TEST_F(Collectives, AgainstHandComputedValues) {
  dist_test::check_collectives<float>(*world(), Device::cpu());
  dist_test::check_collectives<double>(*world(), Device::cpu());
  dist_test::check_collectives<bf16>(*world(), Device::cpu());
}

TEST_F(Collectives, Fp8TravelsBitForBit) {
  // fp8 does not reduce but moves: an all_gather of e4m3 values keeps them bit for bit.
  const int r = world()->rank();
  const Tensor<fp8_e4m3> t = dist_test::values<fp8_e4m3>({0.5 + r, -2.0 * (r + 1)}, {2}, Device::cpu());
  const std::vector<double> got = dist_test::doubles(dist::all_gather(*world(), t));
  std::vector<double> want;
  for (int q = 0; q < world()->size(); ++q) {
    want.push_back(0.5 + q);
    want.push_back(-2.0 * (q + 1));
  }
  EXPECT_EQ(got, want);
}

TEST_F(Collectives, AllToAllGradientIsTheReverseAllToAll) {
  dist_test::check_all_to_all_gradient(*world(), Device::cpu());
}

TEST_F(Collectives, DisagreeingRanksGetTheSameError) {
  ASSERT_EQ(world()->size(), 2) << "the expected messages are written for 2 ranks";
  dist_test::check_disagreements(*world(), Device::cpu());
}

TEST_F(Collectives, SplitGivesAnIndependentCommunicator) {
  auto dup = world()->split(0, world()->rank());
  EXPECT_EQ(dup->size(), world()->size());
  EXPECT_EQ(dup->rank(), world()->rank());
  // One communicator per rank: collectives over a group of one.
  auto alone = world()->split(world()->rank(), 0);
  EXPECT_EQ(alone->size(), 1);
  Tensor<float> t = full<float>({2}, 3.0f);
  dist::all_reduce(*alone, t);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{3.0f, 3.0f}));
  dist::all_reduce(*dup, t);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{6.0f, 6.0f}));
}

TEST_F(Collectives, ControlPlane) {
  const int W = world()->size(), r = world()->rank();
  std::vector<std::int64_t> send;
  for (int d = 0; d < W; ++d) send.push_back(10 * r + d);
  const std::vector<std::int64_t> recv = world()->all_to_all_host(send);
  for (int s = 0; s < W; ++s) EXPECT_EQ(recv[static_cast<std::size_t>(s)], 10 * s + r);
  std::int64_t v[2] = {r + 1, -r};
  world()->all_reduce_host(v, 2, dist::ReduceOp::max);
  EXPECT_EQ(v[0], W);
  EXPECT_EQ(v[1], 0);
}

}  // namespace
