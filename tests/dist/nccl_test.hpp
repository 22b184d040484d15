// The NCCL communicator for the GPU multi-rank tests (tests/dist/test_dist_*_cuda.cpp): one GPU
// per rank (its local rank on the host), created on first use and destroyed before MPI and the
// CUDA runtime shut down. Tests skip, on every rank alike, with fewer than 2 GPUs.
#pragma once

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/dist/nccl.hpp>

#include "dist_test.hpp"

namespace kiln::dist_test {

inline std::shared_ptr<dist::NcclCommunicator>& nccl_slot() {
  static std::shared_ptr<dist::NcclCommunicator> comm;
  return comm;
}

inline int local_gpu() { return world()->local_rank() % cuda::device_count(); }

inline std::shared_ptr<dist::NcclCommunicator> nccl_world() {
  if (!nccl_slot()) nccl_slot() = dist::NcclCommunicator::create(world(), local_gpu());
  return nccl_slot();
}

inline Device gpu() { return Device::cuda(local_gpu()); }

class NcclEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (nccl_slot()) cuda::synchronize(nccl_slot()->device().index);
    nccl_slot().reset();
  }
};

inline ::testing::Environment* const nccl_environment = ::testing::AddGlobalTestEnvironment(new NcclEnvironment);

// Skips unless every rank can have a GPU of its own (the same answer on every rank of a host).
class NcclTest : public DistTest {
 protected:
  void SetUp() override {
    std::int64_t gpus = cuda::device_count();
    world()->all_reduce_host(&gpus, 1, dist::ReduceOp::max);
    if (gpus < 2 || gpus < world()->size()) GTEST_SKIP() << "needs a GPU per rank (2 or more GPUs), found " << gpus;
  }
};

}  // namespace kiln::dist_test
