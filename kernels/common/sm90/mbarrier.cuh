// mbarrier: Hopper's (sm_90) transaction barrier in shared memory. Each wrapper is a single PTX
// instruction (PTX ISA 8.x, "Parallel synchronization and communication instructions: mbarrier").
//
// An mbarrier is a 64-bit object in shared memory with an arrival count and a transaction byte
// count; a phase completes when both reach zero, and waiters name the phase by its parity
// (0, 1, 0, ...). TMA and bulk copies (tma.cuh) count their bytes down on the barrier, so a
// consumer that waits on it knows the tile has landed. Barriers are named by their shared-window
// address (smem.cuh: shared_address).
#pragma once

#include <cstdint>

namespace kiln::kernels::sm90 {

__device__ inline void mbarrier_init(std::uint32_t bar, std::uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA) before any copy names them.
__device__ inline void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

// One arrival that also announces `bytes` more bytes the phase must receive before it completes.
__device__ inline void mbarrier_arrive_expect_bytes(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ inline void mbarrier_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Spins until the phase of the given parity has completed. A fresh barrier is in phase 0, so
// waiting for parity 1 returns at once: that is how "every buffer starts empty" is expressed.
__device__ inline void mbarrier_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

}  // namespace kiln::kernels::sm90
