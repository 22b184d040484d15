// Which implementation of a kernel ran. Some kernel families compute one function in several ways
// (the FP8 GEMM: a Hopper kernel, split along K or not, and a plain CUDA kernel), and the launcher
// picks one from the GPU and the arguments. A test that means to exercise one of them can say so:
//
//     KernelTrace trace;                      // records on this thread while it lives
//     fp8::gemm(a, b);
//     EXPECT_EQ(trace.count("fp8_gemm/hopper_split_k"), 1);
//
// Launchers call record_kernel_variant(kernel, variant) for each launch. With no KernelTrace alive
// on the launching thread that is one thread_local load, so production code pays nothing worth
// measuring. Kernels are launched on the thread that calls the op, so a thread-local trace sees
// exactly the launches of the code between its construction and its destruction.
//
// The active trace is a function-local thread_local of an inline function: every translation unit
// (g++ or nvcc, the program or the CUDA backend's shared library) names the same variable, as for
// the kernel registry (core/device_kernel.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class KernelTrace {
 public:
  KernelTrace() : previous_(active()) { active() = this; }
  ~KernelTrace() { active() = previous_; }
  KernelTrace(const KernelTrace&) = delete;
  KernelTrace& operator=(const KernelTrace&) = delete;

  // "kernel/variant" per launch, in launch order.
  const std::vector<std::string>& launches() const { return launches_; }
  // Launches recorded as `name` ("kernel/variant"), or of kernel `name` in any variant.
  std::int64_t count(std::string_view name) const {
    return std::count_if(launches_.begin(), launches_.end(), [&](const std::string& l) {
      return l == name || (l.size() > name.size() && l.compare(0, name.size(), name) == 0 && l[name.size()] == '/');
    });
  }
  void clear() { launches_.clear(); }

  // The innermost trace alive on this thread, or null.
  static KernelTrace*& active() {
    static thread_local KernelTrace* trace = nullptr;
    return trace;
  }
  void record(std::string_view kernel, std::string_view variant) {
    launches_.push_back(std::string(kernel) + "/" + std::string(variant));
  }

 private:
  KernelTrace* previous_;
  std::vector<std::string> launches_;
};

// Called by launchers that choose between implementations; no cost beyond a load without a trace.
inline void record_kernel_variant(std::string_view kernel, std::string_view variant) {
  if (KernelTrace* t = KernelTrace::active()) t->record(kernel, variant);
}

}  // namespace kiln
