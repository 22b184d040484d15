// Helpers shared by the gather family's kernels (gather.cuh: gather and scatter_add; index_rows.cuh:
// row selection and index_add): raw word types for copies that never look at the element type, and
// the out-of-range flag.
//
// Out-of-range indices: the forward kernels read every index anyway, so they validate it on the
// way. A bad index is skipped (never dereferenced) and its row-major position is lowered into a
// one-element flag with atomicMin; the op front-end reads the flag back after the launch and
// throws kiln::Error naming the first bad index, exactly as the CPU path does.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kiln::kernels::gather {

// Calls f(W{}) with an unsigned type of `bytes` bytes (1, 2, 4, 8 or 16): copies move raw words.
template <class F>
void with_word(int bytes, F&& f) {
  switch (bytes) {
    case 16: f(uint4{}); return;
    case 8: f(static_cast<unsigned long long>(0)); return;
    case 4: f(0u); return;
    case 2: f(static_cast<unsigned short>(0)); return;
    default: f(static_cast<unsigned char>(0)); return;
  }
}

// The flag of an argument struct (an int64 buffer holding a position, never negative) as the
// unsigned word atomicMin takes; null stays null (no check).
inline unsigned long long* flag_word(std::int64_t* first_bad) {
  return reinterpret_cast<unsigned long long*>(first_bad);
}

// Records `position` as holding an out-of-range index (the flag keeps the smallest).
__device__ __forceinline__ void flag_bad_index(unsigned long long* flag, std::int64_t position) {
  if (flag) atomicMin(flag, static_cast<unsigned long long>(position));
}

}  // namespace kiln::kernels::gather
