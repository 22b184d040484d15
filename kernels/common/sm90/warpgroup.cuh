// Warpgroup roles in Hopper (sm_90) kernels: the register budget of warp-specialised kernels
// (setmaxnreg) and barriers over a subset of the CTA's warps. PTX ISA 8.x, "setmaxnreg" and "bar".
//
// A warpgroup is 4 consecutive warps (128 threads, the unit of wgmma). In a warp-specialised kernel
// a producer warpgroup that only issues copies gives registers back, and the math warpgroups take
// them; the block's 64K registers bound the sum (kernels/fp8_gemm/gemm_hopper.cuh: one producer at
// 40 and two consumers at 232 registers a thread).
#pragma once

namespace kiln::kernels::sm90 {

// setmaxnreg: every thread of the warpgroup must execute it (.sync.aligned); Registers is a
// multiple of 8 in [24, 256].
template <int Registers>
__device__ inline void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Registers));
}
template <int Registers>
__device__ inline void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Registers));
}

// A value every lane of the (converged) warp holds alike, read from shared memory, passed through
// lane 0 so that the compiler knows it is warp-uniform: what derives from it (loop bounds, tile
// offsets, shared-memory addresses, wgmma descriptors) then lives in uniform registers and runs on
// the uniform datapath. Read directly, a persistent kernel's tile index from shared memory made
// every descriptor a per-thread value, moved to uniform registers at each use: the dK/dV kernel
// issued 7% more instructions, its uniform pipe fell from 23% to 1% busy and it ran 1.20x longer
// (H100, Nsight Compute, 2026-12-06). The same idea as CUTLASS's canonical_warp_idx_sync.
__device__ inline int warp_uniform(int value) { return __shfl_sync(0xffffffffu, value, 0); }

// Barrier over `threads` threads (a multiple of 32) on hardware barrier `id` (1..15; 0 is __syncthreads).
__device__ inline void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
// Counts this warp's threads towards barrier `id` without waiting for it (producer/consumer
// hand-offs: the waiting side syncs, the signalling side arrives).
__device__ inline void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Two consumer warpgroups (wg 0 and 1) of a warp-specialised kernel taking turns at issuing their
// tensor-core work (FlashAttention-3's ping-pong, Shah et al. 2024): while one issues, the other
// runs its non-tensor work (a softmax), instead of both reaching it at once when they wait for the
// same shared-memory tiles. Hardware barriers kFirst + wg (2 x 128 threads each): a warpgroup's
// turn is a sync on its own barrier, which the other's pass_turn arrives on. wg 0 goes first
// (start); both must take the same number of turns, and finish() takes wg 1's last pass, so
// that no arrival is left on a barrier when the block exits. `on` false: every call does nothing.
struct PingPong {
  static constexpr int kFirst = 1;  // barriers 1 and 2 (0 is __syncthreads)
  bool on;
  int wg;
  __device__ void start() const {
    if (on && wg == 1) named_barrier_arrive(kFirst, 256);
  }
  __device__ void take_turn() const {
    if (on) named_barrier_sync(kFirst + wg, 256);
  }
  __device__ void pass_turn() const {
    if (on) named_barrier_arrive(kFirst + 1 - wg, 256);
  }
  __device__ void finish() const {
    if (on && wg == 0) named_barrier_sync(kFirst, 256);
  }
};

}  // namespace kiln::kernels::sm90
