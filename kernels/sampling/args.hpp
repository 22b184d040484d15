// Arguments of the token-sampling kernel (kernels/sampling/sampling.cuh; front-end
// ops/sampling.hpp, CPU reference backend/cpu/sampling.hpp).
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// One token per row of logits [rows, vocab] (contiguous): greedy (temperature 0) or Gumbel-max
// over the top-k / top-p set of logits / temperature (definitions in ops/sampling.hpp).
struct SampleTokensArgs {
  static constexpr const char* kernel = "sample_tokens";
  static constexpr const char* header = "kiln/kernels/sampling/sampling.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;              // of logits: f32, f64, bf16, f16
  const void* logits = nullptr;          // [rows, vocab]
  std::int64_t* tokens = nullptr;        // [rows] out
  const std::int64_t* sample_ids = nullptr;  // [rows]: which sample each row is (a Philox counter word)
  const std::int64_t* positions = nullptr;   // [rows]: the position of the token drawn (another word)
  std::int64_t rows = 0, vocab = 0;
  float temperature = 1.0f;              // 0: greedy
  std::int64_t top_k = 0;                // 0 or >= vocab: off
  float top_p = 1.0f;                    // >= 1: off
  std::uint64_t seed = 0;
};

}  // namespace kiln::kernels
