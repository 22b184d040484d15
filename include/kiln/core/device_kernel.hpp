// How op front-ends reach device kernels without the core depending on CUDA: the typed kernel
// boundary.
//
// Each kernel family declares its arguments as plain structs in kernels/<family>/args.hpp
// (pointers, sizes, strides, scalars and a DeviceLaunch, with named fields; g++ compiles them).
// A front-end fills one in and calls launch_device_kernel(op, args). The kernel header of the
// family, compiled by nvcc, registers one launcher per argument type:
//
//     inline const bool registered = register_device_kernel(&launch_rms_norm_forward);
//
// The registry is keyed by the argument type: DeviceKernel<Args>::launcher is a static inline
// data member of a class template, so every translation unit of a program (g++ or nvcc) names the
// same variable (the One Definition Rule holds because the core never changes shape with
// __CUDACC__). It is constant-initialised to null, so the registrations that nvcc-compiled files
// make during static initialisation cannot be undone by initialisation order.
//
// A CPU-only program never registers anything; a CUDA tensor then gets a kiln::Error saying what
// to include, never a crash.
#pragma once

#include <concepts>
#include <type_traits>

#include "kiln/core/device.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/storage.hpp"

namespace kiln {

// Where a kernel runs: the device index and the stream (a cudaStream_t, which is CUstream_st*:
// declared here so that g++-compiled front-ends can carry one without CUDA's headers).
struct DeviceLaunch {
  int device = 0;
  DeviceStream stream = nullptr;
};

// What every kernel argument struct provides: a DeviceLaunch named `launch`, the kernel's name for
// errors (`kernel`), and the header that registers it (`header`, relative to the include root).
// Arguments travel by value into the launcher, so they must be plain data.
template <class Args>
concept DeviceKernelArgs = std::is_trivially_copyable_v<Args> && requires(const Args& a) {
  { a.launch } -> std::convertible_to<DeviceLaunch>;
  { Args::kernel } -> std::convertible_to<const char*>;
  { Args::header } -> std::convertible_to<const char*>;
};

template <DeviceKernelArgs Args>
struct DeviceKernel {
  using Launcher = void (*)(const Args&);
  static inline Launcher launcher = nullptr;
};

// Registers the launcher for Args (the last registration wins; kiln registers each once).
template <DeviceKernelArgs Args>
bool register_device_kernel(void (*launcher)(const Args&)) {
  DeviceKernel<Args>::launcher = launcher;
  return true;
}

template <DeviceKernelArgs Args>
bool has_device_kernel() {
  return DeviceKernel<Args>::launcher != nullptr;
}

// Runs the kernel registered for Args on behalf of op `op`; a clear error when none is.
template <DeviceKernelArgs Args>
void launch_device_kernel(const char* op, const Args& args) {
  const auto launcher = DeviceKernel<Args>::launcher;
  if (!launcher) {
    if (!cuda_backend())
      fail(op, "got a CUDA tensor but no CUDA backend is registered: include <kiln/backend/cuda.hpp> in a file "
               "compiled by nvcc");
    fail(op, "has no CUDA kernel '", Args::kernel, "': include <", Args::header, "> in a file compiled by nvcc");
  }
  launcher(args);
}

// The device and the stream kiln queues work on for `device` (the calling thread's current kiln
// stream: see backend/cuda/stream.hpp).
inline DeviceLaunch launch_on(const char* op, Device device) {
  DeviceBackend& backend = backend_for(op, device);
  return {device.index, backend.stream ? backend.stream(device.index) : nullptr};
}

}  // namespace kiln
