// wgmma in bf16 (sm_90a): D[64 x N] (+)= A[64 x 16] · B[N x 16]ᵀ per instruction, FP32 accumulators
// in registers, B from shared memory through a descriptor (sm90/wgmma.cuh's 128-byte-swizzled
// layouts), for N = 32, 64, 128, 192 (the attention kernels' tile widths): ss, A and B K-major from
// shared memory; rs_mn, A from registers (each warp's 16 rows as an mma.sync A fragment,
// common/mma_sm80.cuh) and B MN-major, read transposed by the instruction (16-bit types only). Accumulator layout
// as in sm90/wgmma.cuh: thread t of the warpgroup holds
// d[4c + 2h + j] = D[16·warp + lane/4 + 8h][8c + 2·(lane%4) + j], which is mma.sync's C layout per
// 8-column chunk c: an S accumulator turns into the A registers of the next product by packing
// pairs (sm80::pack2). Each wrapper is one PTX instruction (PTX ISA, "wgmma.mma_async"); scale_d = 0
// overwrites D. The accumulator operand lists are spelled out once per N in the macros below.
#pragma once

#include <cstdint>

namespace kiln::kernels::sm90 {

// The accumulators as asm operands and their place holders.
#define KILN_WGMMA_D16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define KILN_WGMMA_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define KILN_WGMMA_D32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define KILN_WGMMA_R32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define KILN_WGMMA_D64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define KILN_WGMMA_R64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define KILN_WGMMA_D96 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define KILN_WGMMA_R96 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"

template <int N>
struct WgmmaBf16;

template <>
struct WgmmaBf16<32> {
  // A from shared memory.
  __device__ static void ss(float (&d)[16], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {" KILN_WGMMA_R16 "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : KILN_WGMMA_D16
                 : "l"(a_desc), "l"(b_desc), "r"(scale_d));
  }
  // A from registers: a[4], this warp's 16 x 16 slice in mma.sync's A layout; B MN-major
  // (imm-trans-b = 1: sm90/wgmma.cuh's smem_descriptor_mn_major_sw128).
  __device__ static void rs_mn(float (&d)[16], const unsigned (&a)[4], std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {" KILN_WGMMA_R16 "}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 1;\n}\n"
                 : KILN_WGMMA_D16
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d));
  }
};

template <>
struct WgmmaBf16<64> {
  // A from shared memory.
  __device__ static void ss(float (&d)[32], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" KILN_WGMMA_R32 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : KILN_WGMMA_D32
                 : "l"(a_desc), "l"(b_desc), "r"(scale_d));
  }
  // A from registers: a[4], this warp's 16 x 16 slice in mma.sync's A layout; B MN-major
  // (imm-trans-b = 1: sm90/wgmma.cuh's smem_descriptor_mn_major_sw128).
  __device__ static void rs_mn(float (&d)[32], const unsigned (&a)[4], std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" KILN_WGMMA_R32 "}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : KILN_WGMMA_D32
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d));
  }
};

template <>
struct WgmmaBf16<128> {
  // A from shared memory.
  __device__ static void ss(float (&d)[64], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KILN_WGMMA_R64 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : KILN_WGMMA_D64
                 : "l"(a_desc), "l"(b_desc), "r"(scale_d));
  }
  // A from registers: a[4], this warp's 16 x 16 slice in mma.sync's A layout; B MN-major
  // (imm-trans-b = 1: sm90/wgmma.cuh's smem_descriptor_mn_major_sw128).
  __device__ static void rs_mn(float (&d)[64], const unsigned (&a)[4], std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KILN_WGMMA_R64 "}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : KILN_WGMMA_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d));
  }
};

template <>
struct WgmmaBf16<192> {
  // A from shared memory.
  __device__ static void ss(float (&d)[96], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {" KILN_WGMMA_R96 "}, %96, %97, p, 1, 1, 0, 0;\n}\n"
                 : KILN_WGMMA_D96
                 : "l"(a_desc), "l"(b_desc), "r"(scale_d));
  }
  // A from registers: a[4], this warp's 16 x 16 slice in mma.sync's A layout; B MN-major
  // (imm-trans-b = 1: sm90/wgmma.cuh's smem_descriptor_mn_major_sw128).
  __device__ static void rs_mn(float (&d)[96], const unsigned (&a)[4], std::uint64_t b_desc, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {" KILN_WGMMA_R96 "}, "
                 "{%96, %97, %98, %99}, %100, p, 1, 1, 1;\n}\n"
                 : KILN_WGMMA_D96
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d));
  }
};

#undef KILN_WGMMA_D16
#undef KILN_WGMMA_R16
#undef KILN_WGMMA_D32
#undef KILN_WGMMA_R32
#undef KILN_WGMMA_D64
#undef KILN_WGMMA_R64
#undef KILN_WGMMA_D96
#undef KILN_WGMMA_R96

}  // namespace kiln::kernels::sm90
