// Shared-memory addresses and the proxy fence of Hopper (sm_90) kernels: the asynchronous
// instructions (mbarrier, TMA and bulk copies, wgmma descriptors) name shared memory by its 32-bit
// address in the shared window, and see ordinary stores to it only after a proxy fence.
// References: PTX ISA 8.x, "Memory consistency model: proxies" and "fence.proxy".
#pragma once

#include <cstdint>

namespace kiln::kernels::sm90 {

// The shared-window address of a pointer into this CTA's shared memory.
__device__ inline std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Makes this thread's ordinary shared-memory writes visible to the async proxy (TMA, wgmma).
__device__ inline void fence_proxy_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

}  // namespace kiln::kernels::sm90
