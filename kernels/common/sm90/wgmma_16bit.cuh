// wgmma with 16-bit inputs (bf16 or fp16) and FP32 accumulators, both operands from shared memory
// (sm_90a): D[64 × N] (+)= A[64 × 16] · B[16 × N] per instruction. Each operand is K-major (its
// shared-memory tile holds rows of K: sm90/wgmma.cuh's smem_descriptor_k_major_sw128; imm-trans 0)
// or MN-major (rows of M or N, one per k: smem_descriptor_mn_major_sw128; imm-trans 1, which wgmma
// allows for 16-bit types only). The grouped GEMM uses: forward A, B K-major; dgrad A K-major, B
// MN-major; wgrad both MN-major. Accumulator layout as in sm90/wgmma.cuh: thread t of the warpgroup
// holds d[4c + 2h + j] = D[16·warp + lane/4 + 8h][8c + 2·(lane%4) + j]. scale_d = 0 overwrites D.
// Each call is one PTX instruction (PTX ISA, "wgmma.mma_async"); the transposes are immediates
// ("n" operands); the accumulator operand lists are spelled out once per N in the macros below.
// (wgmma_bf16.cuh keeps the bf16 N = 32/64/128/192 wrappers, with A from registers too, that the
// attention kernels use.)
#pragma once

#include <cstdint>
#include <type_traits>

#include "kiln/core/dtype.hpp"

namespace kiln::kernels::sm90 {

#define KILN_WGMMA16_D64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define KILN_WGMMA16_R64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define KILN_WGMMA16_D128 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define KILN_WGMMA16_R128 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

template <class T, int N, bool TransA, bool TransB>
struct Wgmma16;

template <class T, bool TransA, bool TransB>
struct Wgmma16<T, 128, TransA, TransB> {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, "wgmma 16-bit inputs are bf16 or fp16");
  __device__ static void ss(float (&d)[64], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    if constexpr (std::is_same_v<T, bf16>)
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" KILN_WGMMA16_R64 "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                   : KILN_WGMMA16_D64
                   : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TransA ? 1 : 0), "n"(TransB ? 1 : 0));
    else
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {" KILN_WGMMA16_R64 "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                   : KILN_WGMMA16_D64
                   : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TransA ? 1 : 0), "n"(TransB ? 1 : 0));
  }
};

template <class T, bool TransA, bool TransB>
struct Wgmma16<T, 256, TransA, TransB> {
  static_assert(std::is_same_v<T, bf16> || std::is_same_v<T, fp16>, "wgmma 16-bit inputs are bf16 or fp16");
  __device__ static void ss(float (&d)[128], std::uint64_t a_desc, std::uint64_t b_desc, int scale_d) {
    if constexpr (std::is_same_v<T, bf16>)
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" KILN_WGMMA16_R128 "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
                   : KILN_WGMMA16_D128
                   : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TransA ? 1 : 0), "n"(TransB ? 1 : 0));
    else
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {" KILN_WGMMA16_R128 "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
                   : KILN_WGMMA16_D128
                   : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TransA ? 1 : 0), "n"(TransB ? 1 : 0));
  }
};

#undef KILN_WGMMA16_D64
#undef KILN_WGMMA16_R64
#undef KILN_WGMMA16_D128
#undef KILN_WGMMA16_R128

}  // namespace kiln::kernels::sm90
