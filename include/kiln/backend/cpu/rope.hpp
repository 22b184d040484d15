// Rotary position embedding CPU kernel: rotates pairs of features by per-position angles.
//
// x is a contiguous [outer, S, H, D] buffer (outer = the batch dims, possibly 1). Feature pair i
// (i < D/2) of every head at sequence index s is the complex number (x[a] + i x[b]), multiplied by
// (cos + i sin) of its angle:
//   y[a] = x[a] cos - x[b] sin,   y[b] = x[a] sin + x[b] cos.
// The pair (a, b) is (2i, 2i+1) for the interleaved layout and (i, i + D/2) for half_split.
// The cos/sin tables are [S, D/2] (shared by the batch) or [outer, S, D/2] (per batch row).
// Rotating by the negative angle (sin -> -sin) is the inverse and the transpose: the backward.
#pragma once

#include <cstdint>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::cpu {

struct RopeShape {
  std::int64_t outer = 1, S = 0, H = 0, D = 0;
  bool per_batch_tables = false;  // tables are [outer, S, D/2] rather than [S, D/2]
  bool half_split = true;         // pairs (i, i + D/2); false: pairs (2i, 2i+1)
};

// C: the compute type the tables hold. inverse: rotate by -angle.
template <class T, class C>
void rope_rotate(const T* x, T* y, const C* cos, const C* sin, const RopeShape& s, bool inverse) {
  const std::int64_t half = s.D / 2;
  const std::int64_t rows = s.outer * s.S;
  parallel_for(rows, s.H * s.D, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t t = (s.per_batch_tables ? row : row % s.S) * half;
      for (std::int64_t h = 0; h < s.H; ++h) {
        const std::int64_t base = (row * s.H + h) * s.D;
        const T* xh = x + base;
        T* yh = y + base;
        for (std::int64_t i = 0; i < half; ++i) {
          const std::int64_t a = s.half_split ? i : 2 * i;
          const std::int64_t b = s.half_split ? i + half : 2 * i + 1;
          const C c = cos[t + i];
          const C sn = inverse ? -sin[t + i] : sin[t + i];
          const C x0 = static_cast<C>(xh[a]), x1 = static_cast<C>(xh[b]);
          yh[a] = convert<T>(x0 * c - x1 * sn);
          yh[b] = convert<T>(x0 * sn + x1 * c);
        }
      }
    }
  });
}

}  // namespace kiln::cpu
