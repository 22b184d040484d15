// Asking for global memory ahead of its use: prefetch.global.L2 (PTX ISA, "prefetch, prefetchu")
// brings the 128-byte line holding an address into L2 and returns at once: no register waits for
// it, no fault on the address. For data a kernel will read after long work of its own (an
// epilogue's extra operand, read after the main loop), so that the read finds it in L2 instead of
// paying a DRAM latency then.
#pragma once

namespace kiln::kernels {

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

}  // namespace kiln::kernels
