// Programmatic dependent launch (Hopper and later): a kernel that only consumes what the kernel
// before it in the stream wrote may be launched before that kernel finishes, so that its launch
// and block scheduling overlap the first kernel's last blocks instead of following them.
//
// Two halves. The first (primary) kernel's blocks call allow_dependent_launch(): once every block
// has called it or exited, the dependent grid may start on whatever multiprocessors have room.
// The dependent kernel calls wait_for_prior_grid() before it reads anything the primary wrote:
// griddepcontrol.wait returns when the primary grid has completed and its memory operations are
// visible (PTX ISA, "griddepcontrol"), so the data dependency is kept whatever the trigger's
// place. The host launches the dependent kernel with the ProgrammaticStreamSerialization
// attribute (launch_after_prior_grid); without it, or before sm_90, both calls are no-ops and the
// launch is an ordinary one. A kernel launched this way completes only after its wait returned,
// so a third kernel ordered after it in the stream still sees the primary's results. Stream
// capture keeps the relation as a programmatic edge of the graph.
//
// Where it pays: a short kernel right after a long one that leaves the machine mostly idle at its
// end (the decode attention's split combine: docs/mla.md), where the launch gap (~1-2 us between
// dependent kernels) is a visible share of the pair's time.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_info.hpp"

namespace kiln::kernels {

// In the primary kernel: this block lets the dependent grid start (every block must call it or exit).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// In the dependent kernel, before its first read of the primary's results.
__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the
// stream's previous kernel when `dependent` and the device is sm_90 or later; otherwise as an
// ordinary launch. The caller checks the launch (KILN_CUDA_CHECK_LAUNCH).
template <class... Params, class... Args>
void launch_after_prior_grid(bool dependent, int device, void (*kernel)(Params...), dim3 grid, dim3 block,
                             std::size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (dependent && device_info(device).major >= 9) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  KILN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace kiln::kernels
