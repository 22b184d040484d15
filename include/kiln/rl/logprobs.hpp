// Per-token log-probabilities of sampled tokens, and per-token entropies, from a policy's logits.
//
// token_logprobs(logits [B, T, V], tokens [B, T]) -> [B, T], element (b, t) = log p(tokens[b, t])
// under softmax(logits[b, t, :] / temperature):
//
//   log p(y) = x_y - logsumexp(x) = -cross_entropy(x, y)
//
// so it is built on kiln's fused cross_entropy with Reduction::none (ops/cross_entropy.hpp) rather
// than on a kernel of its own. That op is the fused log-softmax + gather the GRPO loss needs: its forward
// keeps two doubles per row (the max and the log-sum), never a [tokens, vocab] probability tensor,
// and it has CPU and CUDA kernels and a backward (d log p(y) / dx = onehot(y) - softmax(x), the
// softmax recomputed from the saved row statistics). The only [tokens, vocab] tensors are the
// logits themselves and, in backward, their gradient.
//
// Temperature: the sampler drew tokens from softmax(x / temperature), so the ratio
// pi_theta / pi_old must compare log-probs of that same distribution; TRL's GRPOTrainer likewise
// divides the logits by the generation temperature before its log-softmax. A temperature other
// than 1 costs one logits-sized scaled copy (kept by autograd for the backward).
//
// token_entropy(logits [B, T, V]) -> [B, T], H = -sum_v p_v log p_v, for logging only (no graph).
// It walks the rows in chunks of at most `chunk_rows` tokens; each chunk goes through kiln ops
// (log_softmax, exp, mul, sum), so it runs on any device that has those kernels, and the largest
// temporaries are a few [chunk_rows, V] tensors rather than [B * T, V].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/cross_entropy.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/softmax.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/ops/where.hpp"

namespace kiln::rl {

namespace detail {

inline void check_temperature(const char* op, double temperature) {
  check(std::isfinite(temperature) && temperature > 0.0, op, "temperature must be finite and > 0, got ", temperature);
}

}  // namespace detail

// log p(tokens[b, t]) under softmax(logits[b, t, :] / temperature), shape [B, T]; differentiable
// in logits. Positions whose token equals `ignore_index` get log-prob 0 and no gradient (the
// cross_entropy convention); every other token must lie in [0, V).
template <class T>
Tensor<T> token_logprobs(const Tensor<T>& logits, const Tensor<std::int64_t>& tokens, double temperature = 1.0,
                         std::int64_t ignore_index = -100) {
  const char* op = "token_logprobs";
  check_defined(op, logits, tokens);
  check_same_device(op, logits, tokens);
  check(logits.dim() == 3, op, "logits must be [B, T, V], got shape ", logits.shape());
  check(tokens.dim() == 2 && tokens.shape()[0] == logits.shape()[0] && tokens.shape()[1] == logits.shape()[1], op,
        "logits of shape ", logits.shape(), " need tokens of shape [", logits.shape()[0], ", ", logits.shape()[1],
        "], got tokens of shape ", tokens.shape());
  check(logits.shape()[2] > 0, op, "empty vocabulary (logits of shape ", logits.shape(), ")");
  detail::check_temperature(op, temperature);
  const Tensor<T> scaled = temperature == 1.0 ? logits : mul(logits, 1.0 / temperature);
  try {
    return neg(cross_entropy(scaled, tokens, ignore_index, Reduction::none));
  } catch (const Error& e) {  // e.g. a token out of range: say which op the caller called
    fail(op, "(logits of shape ", logits.shape(), ") ", e.what());
  }
}

// Entropy of softmax(logits[b, t, :] / temperature) per token, shape [B, T], in nats. Not
// differentiable (runs under NoGradGuard): it is a logged statistic. Rows with -inf logits are
// handled (p = 0 contributes 0, not 0 * -inf).
template <class T>
Tensor<T> token_entropy(const Tensor<T>& logits, double temperature = 1.0, std::int64_t chunk_rows = 1024) {
  const char* op = "token_entropy";
  check_defined(op, logits);
  check(logits.dim() == 3, op, "logits must be [B, T, V], got shape ", logits.shape());
  check(logits.shape()[2] > 0, op, "empty vocabulary (logits of shape ", logits.shape(), ")");
  check(chunk_rows > 0, op, "chunk_rows must be > 0, got ", chunk_rows);
  detail::check_temperature(op, temperature);
  NoGradGuard no_grad;
  const std::int64_t B = logits.shape()[0], Tn = logits.shape()[1], V = logits.shape()[2];
  if (B * Tn == 0) return Tensor<T>({B, Tn}, logits.device());

  // Entropy of each row of x [rows, V]: -sum_v p_v log p_v, with log p from log_softmax.
  auto rows_entropy = [&](Tensor<T> x) {
    if (temperature != 1.0) x = mul(x, 1.0 / temperature);
    const Tensor<T> log_p = log_softmax(x, -1);
    const Tensor<T> p = exp(log_p);
    const Tensor<T> p_log_p = where(gt(p, 0.0), mul(p, log_p), 0.0);
    return neg(sum(p_log_p, {-1}));
  };

  std::vector<Tensor<T>> parts;
  const std::int64_t rows = B * Tn;
  // [B, T] merge into one row dim when a batch step is T sequence steps (or either size is 1).
  const bool flattens = B == 1 || Tn == 1 || logits.strides()[0] == Tn * logits.strides()[1];
  if (flattens) {
    const Tensor<T> flat = view(logits.detach(), {rows, V});
    for (std::int64_t r = 0; r < rows; r += chunk_rows)
      parts.push_back(rows_entropy(narrow(flat, 0, r, std::min(chunk_rows, rows - r))));
  } else {  // strides that do not flatten: chunk each sequence's [T, V] view instead of copying all logits
    for (std::int64_t b = 0; b < B; ++b) {
      const Tensor<T> seq = squeeze(narrow(logits.detach(), 0, b, 1), 0);
      for (std::int64_t t = 0; t < Tn; t += chunk_rows)
        parts.push_back(rows_entropy(narrow(seq, 0, t, std::min(chunk_rows, Tn - t))));
    }
  }
  return reshape(parts.size() == 1 ? parts[0] : cat(parts, 0), {B, Tn});
}

}  // namespace kiln::rl
