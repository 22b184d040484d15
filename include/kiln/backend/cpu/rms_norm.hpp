// RMSNorm CPU kernels over the rows of a contiguous [rows, D] buffer (D = the normalised dim).
//
// Forward, per row: r = 1 / sqrt(mean(x^2) + eps), y = x * r * w. The mean of squares is
// accumulated in double whatever T is; r is kept (in double) for the backward pass.
//
// Backward, per row, with xhat = x * r and gw = g * w:
//   dx = r * (gw - xhat * mean(gw * xhat))
// (differentiating r through mean(x^2) gives the -xhat * mean(...) term), and dw is the sum over
// rows of g * xhat. The dw sum runs over row blocks whose boundaries depend only on the problem
// size; the block partials are added in block order, so dw does not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::cpu {

// w may be null (no weight: w = 1). Writes y and rstd[rows].
template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, double* rstd, std::int64_t rows, std::int64_t D, double eps) {
  parallel_for(rows, 2 * D, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      double squares = 0.0;
      for (std::int64_t j = 0; j < D; ++j) {
        const double v = static_cast<double>(xr[j]);
        squares += v * v;
      }
      const double rs = 1.0 / std::sqrt(squares / static_cast<double>(D) + eps);
      rstd[r] = rs;
      if constexpr (is_low_precision<T>) {
        // As Hugging Face LlamaRMSNorm: normalise in float32, round to the input dtype, then
        // multiply by the weight (one more rounding), so checkpoints behave as they were trained.
        const float rf = static_cast<float>(rs);
        for (std::int64_t j = 0; j < D; ++j) {
          const T n = convert<T>(static_cast<float>(xr[j]) * rf);
          yr[j] = w ? convert<T>(static_cast<float>(n) * static_cast<float>(w[j])) : n;
        }
      } else if (w) {
        for (std::int64_t j = 0; j < D; ++j)
          yr[j] = static_cast<T>(static_cast<double>(xr[j]) * rs * static_cast<double>(w[j]));
      } else {
        for (std::int64_t j = 0; j < D; ++j) yr[j] = static_cast<T>(static_cast<double>(xr[j]) * rs);
      }
    }
  });
}

// w may be null (w = 1); dx and dw may be null (not wanted). g is the output gradient. dx_add, when
// not null, is a gradient x received before: dx = dx_add + the rms_norm gradient, rounded once.
template <class T>
void rms_norm_backward(const T* x, const T* w, const T* g, const double* rstd, T* dx, T* dw, std::int64_t rows,
                       std::int64_t D, const T* dx_add = nullptr) {
  // Row blocks: at least a parallel grain of work each, and at most 64 of them, so the dw partials
  // (64 x D doubles at most) stay small for any number of rows.
  constexpr std::int64_t max_blocks = 64;
  const std::int64_t block =
      std::max({std::int64_t{1}, parallel_grain / std::max<std::int64_t>(3 * D, 1), (rows + max_blocks - 1) / max_blocks});
  const std::int64_t blocks = rows > 0 ? (rows + block - 1) / block : 0;
  std::vector<double> partial(dw ? static_cast<std::size_t>(blocks * D) : 0, 0.0);

  parallel_chunks(rows, block, [&](std::int64_t begin, std::int64_t end) {
    double* acc = dw ? partial.data() + (begin / block) * D : nullptr;
    for (std::int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * D;
      const T* gr = g + r * D;
      const double rs = rstd[r];
      double dot = 0.0;  // sum of gw * xhat
      for (std::int64_t j = 0; j < D; ++j) {
        const double gw = static_cast<double>(gr[j]) * (w ? static_cast<double>(w[j]) : 1.0);
        dot += gw * static_cast<double>(xr[j]) * rs;
      }
      const double m = dot / static_cast<double>(D);
      if (dx) {
        T* dxr = dx + r * D;
        const T* addr = dx_add ? dx_add + r * D : nullptr;  // a gradient received before, folded in
        for (std::int64_t j = 0; j < D; ++j) {
          const double gw = static_cast<double>(gr[j]) * (w ? static_cast<double>(w[j]) : 1.0);
          const double xhat = static_cast<double>(xr[j]) * rs;
          const double d = rs * (gw - xhat * m);
          dxr[j] = convert<T>(addr ? d + static_cast<double>(addr[j]) : d);
        }
      }
      if (acc)
        for (std::int64_t j = 0; j < D; ++j) acc[j] += static_cast<double>(gr[j]) * static_cast<double>(xr[j]) * rs;
    }
  });

  if (dw) {
    for (std::int64_t j = 0; j < D; ++j) {
      double s = 0.0;
      for (std::int64_t b = 0; b < blocks; ++b) s += partial[static_cast<std::size_t>(b * D + j)];
      dw[j] = convert<T>(s);
    }
  }
}

}  // namespace kiln::cpu
