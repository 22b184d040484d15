// Thread-block clusters on Hopper (sm_90): CTAs launched together on neighbouring SMs that can
// address each other's shared memory (distributed shared memory). kiln uses them for TMA multicast:
// one CTA's copy lands in the shared memory of several CTAs of its cluster (tma.cuh:
// tma_load_2d_multicast), so a tile that two CTAs both read crosses L2 once. Each device wrapper is
// a single PTX instruction or a fixed pair (PTX ISA 8.x: "barrier.cluster", "mapa", "mbarrier").
//
// The rules a multicasting pipeline follows (and the reason for each helper below):
//   - a CTA's barriers must be initialised before any other CTA's copy or arrival names them:
//     init, fence.mbarrier_init.release.cluster, then cluster_sync() by every thread of the cluster;
//   - a producer may overwrite a stage only when the consumers of EVERY CTA its multicast writes into
//     have released it: their warps arrive on the producer's `empty` barrier too
//     (mbarrier_arrive_remote), and the producer waits on it as on its own CTA's arrivals
//     (mbarrier.cuh: mbarrier_wait). The arrival and the wait keep PTX's default CTA-scope
//     release/acquire: what they order are the consumers' wgmma reads before the producer's next
//     TMA write, which the wait-then-copy sequence already orders (as CUTLASS's cluster pipelines
//     do). The first version used cluster-scope release/acquire on every k-block, and ran 1.79x
//     slower than one CTA a tile (docs/fp8-gemm.md);
//   - a CTA must not exit while another may still arrive on its barriers: the producer waits for the
//     last releases of every stage before it returns (its consumers wait for every copy into it).
#pragma once

#include <cstdint>

namespace kiln::kernels::sm90 {

// This CTA's rank in its cluster (0 .. cluster size − 1).
__device__ inline std::uint32_t cluster_rank() {
  std::uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

// Every thread of every CTA of the cluster arrives, then waits for all the others: the cluster-wide
// __syncthreads, with release/acquire at cluster scope (barrier initialisation made visible).
__device__ inline void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// One arrival on the barrier at shared-window address `bar` (this CTA's address of it) in the CTA of
// rank `rank` of the cluster (this CTA's own rank included; PTX's default semantics, see above).
__device__ inline void mbarrier_arrive_remote(std::uint32_t bar, std::uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}

}  // namespace kiln::kernels::sm90
