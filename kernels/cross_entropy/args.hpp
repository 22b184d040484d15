// Arguments of the fused cross-entropy kernels (kernels/cross_entropy/cross_entropy.cuh; front-end
// ops/cross_entropy.hpp, CPU reference backend/cpu/cross_entropy.hpp). Logits [rows..., C] of one
// floating dtype (f32, f64, bf16, f16), the class dim last and unit-stride (rows may start
// anywhere); int64 targets, contiguous, one per row.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/tensor_view.hpp"

namespace kiln::kernels {

// Per row: loss = logsumexp(x) - x[t] = (max - x[t]) + log(sum(exp(x - max))); 0 for rows whose
// target is ignore_index. Writes each row's statistics for the backward, and either the per-row
// losses (`losses`: Reduction::none) or their mean or sum (`total`, through `loss_rows`).
struct CrossEntropyForwardArgs {
  static constexpr const char* kernel = "cross_entropy forward";
  static constexpr const char* header = "kiln/kernels/cross_entropy/cross_entropy.cuh";
  DeviceLaunch launch;
  TensorView logits;                      // [rows..., C]
  const std::int64_t* targets = nullptr;  // [rows]
  std::int64_t ignore_index = -100;
  double* stats = nullptr;                // [rows, 2]: the row's max and log(sum(exp(x - max)))
  void* losses = nullptr;                 // logits' dtype, [rows]: the per-row losses; null when reduced
  double* loss_rows = nullptr;            // [rows] workspace for `total`; null when not reduced
  void* total = nullptr;                  // logits' dtype, 0-d: the mean or sum; null when not reduced
  double* counted = nullptr;              // 0-d: the rows not ignored (the mean's denominator); with total
  bool mean = true;                       // total is the mean over counted rows, else the sum
  std::int64_t* first_bad = nullptr;      // 0-d, set to `rows` by the caller: gets the first row whose target
                                          // is neither ignore_index nor a class index
};

// gx[r] = w_r * (softmax(x[r]) - onehot(t_r)), w_r = g[r] (per-row g) or g (one value) or
// g / counted (the mean); rows whose target is ignore_index get 0.
struct CrossEntropyBackwardArgs {
  static constexpr const char* kernel = "cross_entropy backward";
  static constexpr const char* header = "kiln/kernels/cross_entropy/cross_entropy.cuh";
  DeviceLaunch launch;
  TensorView gx;                          // written, logits' shape (unit-stride class dim)
  TensorView logits;                      // [rows..., C]
  const std::int64_t* targets = nullptr;  // [rows]
  std::int64_t ignore_index = -100;
  const double* stats = nullptr;          // [rows, 2] from the forward
  const void* g = nullptr;                // logits' dtype: [rows] when per_row_g, else one value
  bool per_row_g = false;                 // Reduction::none
  const double* counted = nullptr;        // the mean: w_r = g / *counted; null otherwise
};

}  // namespace kiln::kernels
