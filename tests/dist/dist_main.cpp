// main() of the multi-rank tests (tests/dist/test_dist_*.cpp), run as `mpirun -np 2 <test>`:
// starts MPI, prints GoogleTest's usual output on rank 0 only (other ranks print just their failed
// assertions, prefixed with their rank), and returns the same exit code on every rank: failure if
// any rank failed, or 77 (ctest's SKIP_RETURN_CODE for these programs, tests/CMakeLists.txt) when no
// rank failed and every test that was to run skipped on every rank (the NCCL tests on a machine with
// one GPU), so that ctest reports "Skipped", never "Passed", for a program that tested nothing.
// Each test's fixture (dist_test.hpp) also makes a failure on one rank a failure
// on all, so rank 0's output names every failed test.
#include <gtest/gtest.h>

#include <cstdio>

#include "dist_test.hpp"

namespace {

// Failed assertions of a rank other than 0, on stderr.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  kiln::dist::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  auto world = kiln::dist::MpiCommunicator::world();
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world->rank()));
  }
  std::int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  world->all_reduce_host(&failed, 1, kiln::dist::ReduceOp::max);
  if (world->rank() == 0 && failed) std::fprintf(stderr, "some rank failed (see above)\n");
  if (failed) return 1;
  // Tests that ran to the end without skipping, summed over the ranks: none means nothing was tested.
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  std::int64_t ran = unit.successful_test_count();
  world->all_reduce_host(&ran, 1, kiln::dist::ReduceOp::sum);
  if (ran == 0) {
    if (world->rank() == 0)
      std::fprintf(stderr, "every test skipped (%d of %d): reported to ctest as skipped (exit 77)\n",
                   unit.skipped_test_count(), unit.test_to_run_count());
    return 77;
  }
  return 0;
}
