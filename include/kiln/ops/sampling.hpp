// sample_tokens: draws one token per row of logits, as a generation engine does after each step.
// CPU reference backend/cpu/sampling.hpp; CUDA kernel kernels/sampling/sampling.cuh. Not
// differentiable (its output is integers).
//
// Per row z (the logits of one sequence), with temperature T, top_k k and top_p p:
//   T = 0:  the greedy token, argmax z (the lowest index among equal maxima).
//   else:   y = z / T;
//           top-k (0 < k < V): keep the y_i >= the k-th largest value of y (ties at it all kept);
//           top-p (p < 1): among the kept, keep the y_i >= v*, the largest value v such that the
//             kept softmax mass of the y_j >= v reaches p (so the most likely tokens whose mass
//             first reaches p; ties kept together; at least the most likely token);
//           token = argmax over the kept i of y_i + g_i, g_i = -log(-log(u_i)): the Gumbel-max
//             trick, an exact draw from softmax(y) restricted to the kept set.
// The order temperature -> top-k -> top-p is Hugging Face's (TemperatureLogitsWarper, then
// TopKLogitsWarper, then TopPLogitsWarper). NaN logits count as -inf.
//
// u_i is a pure function of (seed, sample_ids[r], positions[r], i) (math/sampling.hpp): a
// sequence's draws depend on its own id and position only, never on the batch it shares, the
// thread count or the device; the same seed gives the same samples.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/backend/cpu/sampling.hpp"
#include "kiln/kernels/sampling/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy
  std::int64_t top_k = 0;    // 0: no top-k
  double top_p = 1.0;        // 1: no top-p
  std::uint64_t seed = 0;
};

inline void check_sampling_options(const char* op, const SamplingOptions& o) {
  check(std::isfinite(o.temperature) && o.temperature >= 0.0, op, "temperature must be finite and >= 0, got ",
        o.temperature);
  check(o.top_k >= 0, op, "top_k must be >= 0 (0: off), got ", o.top_k);
  check(o.top_p > 0.0 && o.top_p <= 1.0, op, "top_p must lie in (0, 1] (1: off), got ", o.top_p);
}

// logits [rows, V]; sample_ids and positions [rows] (int64, on the logits' device) -> tokens [rows].
template <class T>
Tensor<std::int64_t> sample_tokens(const Tensor<T>& logits, const SamplingOptions& options,
                                   const Tensor<std::int64_t>& sample_ids, const Tensor<std::int64_t>& positions) {
  static_assert(is_floating<T>, "sample_tokens needs floating logits");
  const char* op = "sample_tokens";
  check_defined(op, logits, sample_ids, positions);
  check_same_device(op, logits, sample_ids, positions);
  check_sampling_options(op, options);
  check(logits.dim() == 2 && logits.size(1) > 0, op, "logits must be [rows, vocab] with vocab > 0, got shape ",
        logits.shape());
  const std::int64_t rows = logits.size(0), V = logits.size(1);
  check(sample_ids.shape() == Shape{rows} && positions.shape() == Shape{rows}, op, "sample_ids of shape ",
        sample_ids.shape(), " and positions of shape ", positions.shape(), " must both be [", rows,
        "] for logits of shape ", logits.shape());
  const Tensor<T> z = contiguous(logits.detach());
  const Tensor<std::int64_t> ids = contiguous(sample_ids), pos = contiguous(positions);
  Tensor<std::int64_t> tokens({rows}, logits.device());
  if (rows == 0) return tokens;
  if (logits.device().is_cpu()) {
    cpu::sample_tokens(z.data(), rows, V, {options.temperature, options.top_k, options.top_p, options.seed},
                       ids.data(), pos.data(), tokens.data());
  } else {
    launch_device_kernel(op, kernels::SampleTokensArgs{.launch = launch_on(op, logits.device()),
                                                       .dtype = dtype_of<T>,
                                                       .logits = z.data(),
                                                       .tokens = tokens.data(),
                                                       .sample_ids = ids.data(),
                                                       .positions = pos.data(),
                                                       .rows = rows,
                                                       .vocab = V,
                                                       .temperature = static_cast<float>(options.temperature),
                                                       .top_k = options.top_k,
                                                       .top_p = static_cast<float>(options.top_p),
                                                       .seed = options.seed});
  }
  return tokens;
}

}  // namespace kiln
