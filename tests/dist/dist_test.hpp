// Helpers for the multi-rank tests: the world communicator, a fixture that makes every rank agree
// on each test's outcome, and comparisons of tensors across ranks.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include <kiln/dist/collectives.hpp>
#include <kiln/dist/mpi.hpp>

#include "test_util.hpp"

namespace kiln::dist_test {

inline std::shared_ptr<dist::MpiCommunicator> world() {
  static std::shared_ptr<dist::MpiCommunicator> w = dist::MpiCommunicator::world();
  return w;
}

// Each test ends with an exchange of "did I fail": a rank whose own checks passed still fails
// the test when another rank failed it (so that rank 0's report is complete). Tests must not
// return early between collectives on one rank only: use EXPECT_*, not ASSERT_*, there.
class DistTest : public ::testing::Test {
 protected:
  void TearDown() override {
    std::int64_t mine = HasFailure() ? 1 : 0;
    std::vector<std::int64_t> all(static_cast<std::size_t>(world()->size()));
    world()->all_gather_host(&mine, all.data(), 1);
    for (std::size_t r = 0; r < all.size(); ++r)
      if (all[r] && !mine) ADD_FAILURE() << "failed on rank " << r << " (its failures are printed on stderr)";
  }
};

// Whether every rank holds exactly the same values (replicas in sync).
template <class T>
bool same_on_all_ranks(dist::Communicator& comm, const Tensor<T>& t) {
  const Tensor<T> local = to(contiguous(t.detach()), comm.device());
  const Tensor<T> gathered = dist::all_gather(comm, reshape(local, {-1}));
  const std::vector<T> all = gathered.to_vector();
  const std::size_t n = static_cast<std::size_t>(local.numel());
  for (std::size_t r = 1; r < static_cast<std::size_t>(comm.size()); ++r)
    for (std::size_t i = 0; i < n; ++i)
      if (!(all[r * n + i] == all[i])) return false;
  return true;
}

}  // namespace kiln::dist_test
