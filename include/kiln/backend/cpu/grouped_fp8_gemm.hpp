// The grouped FP8 GEMM on the CPU: the reference of kernels/grouped_fp8_gemm/ (front-end
// ops/grouped_fp8_gemm.hpp; the function is kernels/grouped_fp8_gemm/args.hpp's). Each group's
// product is the dense FP8 GEMM of backend/cpu/fp8_gemm.hpp (per k-block FP32 partial sums,
// promoted with a_scale · b_scale into an FP32 accumulator) on views of the group's operands, and
// its float64 value is that file's fp8_gemm_reference on the same views: nothing is copied.
//
// Views: group g's rows of A start at row `start` (A's 1×128 scales are k-block major,
// scale(r, kb) = scale[kb · ld + r], so the view's scale pointer moves by `start` and keeps its
// leading dimension); its weights B_g are the g-th [N, K] matrix of the stack, whose 128×128 block
// scales are the g-th [ceil(N/128), ceil(K/128)] grid.
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#include "kiln/backend/cpu/fp8_gemm.hpp"

namespace kiln::cpu {

// Rows [start, start + count) of A that group g multiplies with B_g.
struct GroupSpan {
  std::int64_t start = 0, count = 0;
};

// A's rows from `start` on, as an operand of the dense GEMM (A has 1×128 tiles).
inline Fp8Operand rows_from(const Fp8Operand& a, std::int64_t start) {
  Fp8Operand v = a;
  v.data += start * a.ld;
  v.scale += start;
  return v;
}

// Group g's weights of the stack b [G, N, K] with block scales [G, ceil(N/128), ceil(K/128)].
inline Fp8Operand group_weights(const std::uint8_t* b, const float* b_scale, std::int64_t g, std::int64_t n,
                                std::int64_t k) {
  const std::int64_t kblocks = (k + fp8::tile_size - 1) / fp8::tile_size;
  const std::int64_t row_blocks = (n + fp8::tile_size - 1) / fp8::tile_size;
  Fp8Operand w;
  w.data = b + g * n * k;
  w.ld = k;
  w.scale = b_scale + g * row_blocks * kblocks;
  w.scale_ld = kblocks;
  w.tile_rows = 128;
  return w;
}

// D rows of each group = A rows of the group · B_gᵀ (D [rows, n], row stride n; A with 1×128
// tiles). Rows outside
// every group are not written.
template <class Out>
void grouped_fp8_gemm(const Fp8Operand& a, const std::uint8_t* b, const float* b_scale,
                      const std::vector<GroupSpan>& groups, std::int64_t n, std::int64_t k, Out* d) {
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const GroupSpan s = groups[g];
    if (s.count == 0) continue;
    fp8_gemm(rows_from(a, s.start), group_weights(b, b_scale, static_cast<std::int64_t>(g), n, k), s.count, n, k,
             d + s.start * n, n);
  }
}

// The float64 value of the same products into out [rows, n] (row stride n); rows outside every
// group are not written.
inline void grouped_fp8_gemm_reference(const Fp8Operand& a, const std::uint8_t* b, const float* b_scale,
                                       const std::vector<GroupSpan>& groups, std::int64_t n, std::int64_t k,
                                       double* out) {
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const GroupSpan s = groups[g];
    if (s.count == 0) continue;
    std::vector<std::int64_t> rows(static_cast<std::size_t>(s.count));
    std::iota(rows.begin(), rows.end(), std::int64_t{0});
    fp8_gemm_reference(rows_from(a, s.start), group_weights(b, b_scale, static_cast<std::int64_t>(g), n, k), rows, n,
                       k, out + s.start * n);
  }
}

}  // namespace kiln::cpu
