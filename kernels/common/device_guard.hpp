// Makes a device current on the calling thread for a scope, and restores the previous one. Every
// kernel launcher opens one for its DeviceLaunch::device: launches, attribute changes and
// allocations then go to the right GPU whichever device the caller had current.
#pragma once

#include <cuda_runtime.h>

#include "kiln/kernels/common/cuda_check.hpp"

namespace kiln::cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    KILN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) KILN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace kiln::cuda
