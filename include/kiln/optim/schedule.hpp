// Learning-rate schedule: linear warmup, then cosine decay to a floor (the schedule of GPT-3,
// Chinchilla, llm.c and most LLM pretraining recipes). The rate is a pure function of the step, so
// a resumed run needs nothing but the step count to continue on the same curve.
//
// With step s = 0, 1, 2, ... the index of the optimizer update about to be taken:
//   s <  warmup:           lr = peak · (s + 1) / warmup          (the first update already moves)
//   warmup <= s < total:   p  = (s − warmup) / (total − warmup)  in [0, 1)
//                          lr = floor + (peak − floor) · (1 + cos(π p)) / 2
//   s >= total:            lr = floor
// warmup = 0 starts at the peak; total <= warmup means no decay phase (the floor follows warmup).
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "kiln/core/error.hpp"

namespace kiln::optim {

struct CosineSchedule {
  double peak_lr = 1e-3;
  double min_lr = 1e-4;             // the floor reached at total_steps
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1000;  // warmup included

  void validate() const {
    check(std::isfinite(peak_lr) && peak_lr > 0.0, "CosineSchedule", "peak_lr must be positive, got ", peak_lr);
    check(std::isfinite(min_lr) && min_lr >= 0.0 && min_lr <= peak_lr, "CosineSchedule",
          "min_lr must lie in [0, peak_lr = ", peak_lr, "], got ", min_lr);
    check(warmup_steps >= 0 && total_steps >= 0, "CosineSchedule", "warmup_steps (", warmup_steps,
          ") and total_steps (", total_steps, ") must not be negative");
  }

  // The rate for update `step` (0-based).
  double operator()(std::int64_t step) const {
    check(step >= 0, "CosineSchedule", "step must not be negative, got ", step);
    if (step < warmup_steps)
      return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return min_lr;
    const double p = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
  }
};

}  // namespace kiln::optim
