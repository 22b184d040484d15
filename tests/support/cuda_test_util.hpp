// Helpers for GPU tests: skip cleanly without a GPU, move tensors, poison outputs, switch a
// launcher's environment setting for a scope.
#pragma once

#include <cstdlib>
#include <string>
#include <utility>

#include <kiln/backend/cuda/runtime.hpp>
#include <kiln/kernels/common/device_info.hpp>

#include "test_util.hpp"

// Skips the test (GTEST_SKIP) when no CUDA device is present.
#define KILN_REQUIRE_GPU()                                                   \
  do {                                                                       \
    if (!::kiln::cuda::available()) GTEST_SKIP() << "no CUDA device present"; \
  } while (0)

namespace kiln::testing {

inline const Device gpu = Device::cuda(0);

// Whether the GPU is a Hopper (sm_90), where the wgmma/TMA kernels run (the launchers' rule).
inline bool gpu_is_hopper(int device = 0) { return kernels::device_info(device).major == 9; }

// `name`=`value` in the environment while it lives, unset after: the launchers that read a switch
// at each call (KILN_FP8_ONE_READ, KILN_DECODE_KEY_GROUPS) run either way within one test.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, const char* value) : name_(std::move(name)) { setenv(name_.c_str(), value, 1); }
  ~ScopedEnv() { unsetenv(name_.c_str()); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
};

template <class T>
Tensor<T> on_gpu(const Tensor<T>& t) {
  return to(t, gpu);
}

template <class T>
Tensor<T> on_cpu(const Tensor<T>& t) {
  return to(t, Device::cpu());
}

// Fills every cached block of the allocator with a NaN-like byte pattern (0xFF), so that a kernel
// that leaves an output element unwritten shows garbage (NaN for floating types) instead of a
// stale correct value from an earlier run.
inline void poison_cached_memory(int device = 0) {
  // Allocate and fill big blocks, then free them back to the cache: the next allocations of an op
  // reuse poisoned memory.
  std::vector<Tensor<std::uint8_t>> blocks;
  for (std::size_t bytes : {std::size_t(1) << 10, std::size_t(1) << 16, std::size_t(1) << 20, std::size_t(1) << 24}) {
    for (int i = 0; i < 4; ++i) {
      Tensor<std::uint8_t> b({static_cast<std::int64_t>(bytes)}, Device::cuda(device));
      KILN_CUDA_CHECK(cudaMemsetAsync(b.data(), 0xFF, bytes, cuda::current_stream(device)));
      blocks.push_back(b);
    }
  }
  cuda::synchronize(device);
}

// A CPU tensor and the same values on the GPU, optionally as a contiguous view that starts one
// element past an allocation (so no 16-byte vector path applies).
template <class T>
std::pair<Tensor<T>, Tensor<T>> cpu_and_gpu(const Shape& shape, bool misaligned = false) {
  if (!misaligned) {
    const auto x = randn<T>(shape);
    return {x, on_gpu(x)};
  }
  const std::int64_t n = numel_of(shape);
  const auto flat = randn<T>({n + 1});
  const auto gflat = on_gpu(flat);
  return {reshape(slice(flat, 0, 1, n + 1), shape), reshape(slice(gflat, 0, 1, n + 1), shape)};
}

}  // namespace kiln::testing
