// wgmma on Hopper (sm_90): asynchronous warpgroup matrix multiply-accumulate. A warpgroup (4 warps,
// 128 threads) multiplies a 64×K tile of A by an N×K tile of B, both read from shared memory
// through 64-bit matrix descriptors, into FP32 registers, asynchronously; commit_group /
// wait_group fence the results. Each wrapper is a single PTX instruction (PTX ISA 8.x,
// "Asynchronous warpgroup level matrix multiply-accumulate"). Operands written to shared memory by
// ordinary stores need smem.cuh's fence_proxy_async_shared first; TMA writes need none.
#pragma once

#include <cstdint>

namespace kiln::kernels::sm90 {

// Descriptor of a K-major tile whose rows are 128 bytes, written by TMA with the 128-byte swizzle
// (8 rows × 128 bytes form one 1024-byte swizzle atom; the atoms of successive 8-row groups are
// 1024 bytes apart: the "stride byte offset"). The leading byte offset is unused for swizzled
// K-major layouts. Bits: [0,14) address >> 4, [16,30) leading offset >> 4, [32,46) stride offset >> 4,
// [62,64) swizzle mode (1 = 128-byte). The tile must start on a 1024-byte boundary; stepping along
// K inside the 128-byte row is done by adding the byte offset (>> 4) to the address field, since
// the swizzle is a function of the absolute address bits.
__device__ inline std::uint64_t smem_descriptor_k_major_sw128(std::uint32_t address) {
  std::uint64_t desc = (address & 0x3FFFF) >> 4;
  desc |= std::uint64_t(1) << 16;
  desc |= std::uint64_t(1024 >> 4) << 32;
  desc |= std::uint64_t(1) << 62;
  return desc;
}

// Descriptor of an MN-major tile (the contiguous dim of the shared-memory tile is M or N, not K:
// wgmma reads it with imm-trans = 1, 16-bit types only) written by TMA with the 128-byte swizzle,
// as boxes of 64 elements of MN (128 bytes) × the tile's K rows. In the canonical layout
// ((8 elements, 8 chunks, m), (8 rows, k)) : ((1, 8, LBO), (64 elements, SBO)) (CUTLASS
// make_gmma_desc, PTX ISA "Shared memory matrix layout"): one 128-byte row holds 64 consecutive
// MN elements of one k, 8 such rows form a 1024-byte swizzle atom, successive 8-row groups along K
// are `k_group_bytes` apart (SBO) and successive 64-element MN blocks `mn_block_bytes` apart (LBO:
// the size of one TMA box). Stepping along K by 16 moves the address by 2 atoms (whole atoms, so
// the swizzle phase is unchanged).
__device__ inline std::uint64_t smem_descriptor_mn_major_sw128(std::uint32_t address, std::uint32_t mn_block_bytes,
                                                               std::uint32_t k_group_bytes = 1024) {
  std::uint64_t desc = (address & 0x3FFFF) >> 4;
  desc |= std::uint64_t((mn_block_bytes >> 4) & 0x3FFF) << 16;
  desc |= std::uint64_t((k_group_bytes >> 4) & 0x3FFF) << 32;
  desc |= std::uint64_t(1) << 62;
  return desc;
}

// Orders this thread's earlier register writes to the accumulators before the next wgmma reads them.
__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int Pending>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across a wgmma fence/wait.
template <int N>
__device__ inline void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 × N] (+)= A[64 × 32] · B[N × 32]ᵀ, e4m3 inputs from shared memory, FP32 accumulators in
// registers. accumulate = 0 overwrites D (the first k-step of a promotion interval). Thread t of the
// warpgroup holds, for each 8-column chunk c, d[4c + 2h + j] = D[16·warp + lane/4 + 8h][8c + 2·(lane%4) + j].
template <int N>
struct WgmmaE4m3;

template <>
struct WgmmaE4m3<64> {
  __device__ static void mma(float (&d)[32], std::uint64_t a_desc, std::uint64_t b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a_desc), "l"(b_desc), "r"(accumulate));
  }
};

template <>
struct WgmmaE4m3<128> {
  __device__ static void mma(float (&d)[64], std::uint64_t a_desc, std::uint64_t b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(a_desc), "l"(b_desc), "r"(accumulate));
  }
};

}  // namespace kiln::kernels::sm90
