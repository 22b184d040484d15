// Where one head's rows of an attention operand or gradient lie, for the kernels that address
// rows themselves (attention.cuh's plain kernels read q and k through HeadRows; every backward
// kernel, plain and Hopper, writes dq, dk and dv through GradientRows). Each follows the
// operand's HeadLayout (args.hpp) and, with MLA's parts (AttentionRopeParts), sends the rotary
// columns [split, D) to or from a second tensor: the kernels read q's and k's parts where the
// projections left them and write their gradients where the front-end wants them (ops/attention.hpp
// puts each gradient where its input lay, so that the split the inputs came from needs no copy).
#pragma once

#include <cstdint>

#include "kiln/kernels/attention/args.hpp"
#include "kiln/kernels/common/mma_sm80.cuh"

namespace kiln::kernels::attention {

// Where one head's rows of q or k lie: columns [0, split) from `main` (row stride ld) and, with
// MLA's parts (args.hpp, AttentionRopeParts), [split, D) from `rope` (row stride rope_ld);
// without parts split = D.
template <class T>
struct HeadRows {
  const T* main;
  std::int64_t ld;
  const T* rope;
  std::int64_t rope_ld;
  int split;
};

// Query head h of batch row b (q_rows) and kv head kvh (k_rows), from the resolved layouts; a
// shared rotary key has head stride 0, so every kv head finds the same rows.
template <class T, class Args>
__device__ __forceinline__ HeadRows<T> q_rows(const Args& a, std::int64_t b, int h) {
  const HeadLayout l = a.q_layout, rl = a.rope.q_layout;
  const bool parts = a.rope.dim > 0;
  return {static_cast<const T*>(a.q) + b * l.batch + h * l.head, l.row,
          parts ? static_cast<const T*>(a.rope.q_rope) + b * rl.batch + h * rl.head : nullptr, rl.row,
          a.shape.dk - a.rope.dim};
}
template <class T, class Args>
__device__ __forceinline__ HeadRows<T> k_rows(const Args& a, std::int64_t b, int kvh) {
  const HeadLayout l = a.k_layout, rl = a.rope.k_layout;
  const bool parts = a.rope.dim > 0;
  return {static_cast<const T*>(a.k) + b * l.batch + kvh * l.head, l.row,
          parts ? static_cast<const T*>(a.rope.k_rope) + b * rl.batch + kvh * rl.head : nullptr, rl.row,
          a.shape.dk - a.rope.dim};
}

// load_tile_async (mma_sm80.cuh) for one head's rows of q or k, each 16-byte piece from the part
// that holds its columns (split a multiple of 8).
template <class T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_head_rows_async(T* smem, const HeadRows<T>& src, std::int64_t row0,
                                                     std::int64_t rows) {
  static_assert(D % 8 == 0, "rows are copied in 16-byte pieces");
  constexpr int kPieces = D / 8;
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * kPieces; i += THREADS) {
    const int r = i / kPieces, c = (i - r * kPieces) * 8;
    const bool valid = row0 + r < rows;
    const std::int64_t row = valid ? row0 + r : 0;
    const T* const g = c < src.split ? src.main + row * src.ld + c : src.rope + row * src.rope_ld + (c - src.split);
    sm80::cp_async_16(smem + r * (D + 8) + c, g, valid);
  }
}

// Where one head's rows of a gradient go: columns [0, split) to `main` (row stride ld) and, for
// the rotary parts' gradients, [split, D) to `rope` (row stride rope_ld); without parts split = D.
template <class T>
struct GradientRows {
  T* main;
  std::int64_t ld;
  T* rope;
  std::int64_t rope_ld;
  int split;
};

// dq's rows of query head h of batch row b, dk's and dv's of kv head kvh (resolved layouts: the
// launcher's). Every gradient row has its own place (no stride-0 head: the launcher checks).
template <class T>
__device__ __forceinline__ GradientRows<T> dq_rows(const AttentionBackwardArgs& a, std::int64_t b, int h) {
  const HeadLayout l = a.dq_layout, rl = a.dq_rope_layout;
  const bool parts = a.rope.dim > 0;
  return {static_cast<T*>(a.dq) + b * l.batch + h * l.head, l.row,
          parts ? static_cast<T*>(a.dq_rope) + b * rl.batch + h * rl.head : nullptr, rl.row,
          a.shape.dk - a.rope.dim};
}
template <class T>
__device__ __forceinline__ GradientRows<T> dk_rows(const AttentionBackwardArgs& a, std::int64_t b, int kvh) {
  const HeadLayout l = a.dk_layout, rl = a.dk_rope_layout;
  const bool parts = a.rope.dim > 0;
  return {static_cast<T*>(a.dk) + b * l.batch + kvh * l.head, l.row,
          parts ? static_cast<T*>(a.dk_rope) + b * rl.batch + kvh * rl.head : nullptr, rl.row,
          a.shape.dk - a.rope.dim};
}
template <class T>
__device__ __forceinline__ GradientRows<T> dv_rows(const AttentionBackwardArgs& a, std::int64_t b, int kvh) {
  const HeadLayout l = a.dv_layout;
  return {static_cast<T*>(a.dv) + b * l.batch + kvh * l.head, l.row, nullptr, 0, a.shape.dv};
}

// Writes a warp's 16 rows of an N-column float accumulator in the mma/wgmma C layout (the thread
// holds rows g and g + 8 (r = 0, 1) of row0 + ..., columns 8c + 2t + j, element 4c + 2r + j; the
// plain kernels' acc[N/8][4] is the same order) times `factor` as T: the first `cols` columns,
// rows at or past `rows` skipped, each pair of columns one 4-byte store into the part that holds
// it (split a multiple of 8, so that a column chunk never straddles the parts).
template <class T, int N>
__device__ __forceinline__ void store_gradient_rows(const GradientRows<T>& dst, const float (&acc)[N / 2],
                                                    std::int64_t row0, std::int64_t rows, int cols, float factor) {
  const int lane = static_cast<int>(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const std::int64_t row = row0 + g + 8 * r;
    if (row >= rows) continue;
    T* const main = dst.main + row * dst.ld + 2 * t;
    T* const rope = dst.rope ? dst.rope + row * dst.rope_ld + 2 * t : nullptr;
#pragma unroll
    for (int c = 0; c < N / 8; ++c) {
      if (8 * c >= cols) continue;
      T* const out = 8 * c < dst.split ? main + 8 * c : rope + (8 * c - dst.split);
      *reinterpret_cast<unsigned*>(out) = sm80::pack2<T>(acc[4 * c + 2 * r] * factor, acc[4 * c + 2 * r + 1] * factor);
    }
  }
}

}  // namespace kiln::kernels::attention
