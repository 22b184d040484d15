// The SwiGLU epilogues of the grouped GEMM kernels (args.hpp: GroupedGemmEpilogue), on one
// 16-byte chunk of 8 consecutive output columns of one row: what both kernels (grouped_gemm.cuh's
// mma.sync kernel and grouped_gemm_hopper.cuh) do once their tile of products is rounded to the
// 16-bit type and read back from shared memory a row segment at a time.
//
//   swiglu           gate, up (the product's gate and up columns j .. j + 7)  ->  silu(gate)·up
//   swiglu_backward  da (the second product's dgrad, columns j .. j + 7), gate and up read from
//                    the forward's gate_up  ->  d_gate, d_up
//
// The arithmetic is kiln::swiglu's and its backward's (math/swiglu.hpp on the rounded 16-bit
// values, widened to float, each result rounded once), so the fused expert MLP computes what
// grouped_linear, swiglu and grouped_linear compute one after the other.
//
// Element moves an MoE layer saves (R routed rows, expert width I): forward, the swiglu pass's read
// of [R, 2I] and its launch (5 R·I moves become 3: the GEMM writes silu(gate)·up beside gate|up);
// backward, the write and read of da [R, I], the separate d_gate and d_up tensors and their copy
// into one [R, 2I] gradient (10 R·I become 4): at kiln's big config (R = 32768, I = 512, bf16)
// about 270 MB a layer and step.
#pragma once

#include <cstdint>

#include "kiln/kernels/common/element.cuh"
#include "kiln/math/swiglu.hpp"

namespace kiln::kernels::grouped_gemm {

template <class T>
using Chunk = Vec<T, 8>;  // 8 columns of one row: 16 bytes

template <class T>
__device__ __forceinline__ Chunk<T> as_chunk(const uint4& v) {
  return *reinterpret_cast<const Chunk<T>*>(&v);
}
template <class T>
__device__ __forceinline__ uint4 as_bits(const Chunk<T>& c) {
  return *reinterpret_cast<const uint4*>(&c);
}

// silu(gate)·up of 8 columns.
template <class T>
__device__ __forceinline__ uint4 swiglu_chunk(const uint4& gate, const uint4& up) {
  const Chunk<T> g = as_chunk<T>(gate), u = as_chunk<T>(up);
  Chunk<T> out;
#pragma unroll
  for (int j = 0; j < 8; ++j) out.v[j] = store<T>(math::Swiglu{}(load(g.v[j]), load(u.v[j])));
  return as_bits(out);
}

// d_gate and d_up of 8 columns from the incoming gradient da and the forward's gate and up.
template <class T>
__device__ __forceinline__ void swiglu_backward_chunk(const uint4& da, const uint4& gate, const uint4& up,
                                                      uint4& d_gate, uint4& d_up) {
  const Chunk<T> d = as_chunk<T>(da), g = as_chunk<T>(gate), u = as_chunk<T>(up);
  Chunk<T> dg, du;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const auto grads = math::SwigluGrad{}(load(d.v[j]), load(g.v[j]), load(u.v[j]));
    dg.v[j] = store<T>(grads.gate);
    du.v[j] = store<T>(grads.up);
  }
  d_gate = as_bits(dg);
  d_up = as_bits(du);
}

// The backward's whole step for one chunk: da at (row, col) of the dgrad's tile; gate_up [R, 2I]
// row `row` read at col and I + col; out [R, 2I] written there. I = half.
template <class T>
__device__ __forceinline__ void store_swiglu_backward(const uint4& da, const T* gate_up, T* out, std::int64_t row,
                                                      int col, int half) {
  const std::int64_t at = row * 2 * half + col;
  const uint4 gate = *reinterpret_cast<const uint4*>(gate_up + at);
  const uint4 up = *reinterpret_cast<const uint4*>(gate_up + at + half);
  uint4 d_gate, d_up;
  swiglu_backward_chunk<T>(da, gate, up, d_gate, d_up);
  *reinterpret_cast<uint4*>(out + at) = d_gate;
  *reinterpret_cast<uint4*>(out + at + half) = d_up;
}

}  // namespace kiln::kernels::grouped_gemm
