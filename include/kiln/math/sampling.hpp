// The scalar pieces of token sampling that the CPU reference (backend/cpu/sampling.hpp) and the
// CUDA kernel (kernels/sampling/) share, so that both draw the same noise for the same token.
//
// Sampling is Gumbel-max: with g_i = -log(-log(u_i)) for independent uniforms u_i in (0, 1),
// argmax_i (y_i + g_i) is distributed as softmax(y) (the Gumbel-max trick; e.g. Maddison et al.,
// "A* Sampling", 2014). It needs no sort and no prefix sum, only an argmax, and u_i is a pure
// function of (seed, sample id, position, i) through Philox: a sequence's samples do not depend
// on which other sequences share the batch, on the thread count, or on the device.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD
#include "kiln/core/random.hpp"

namespace kiln::math {

// Tag in the last counter word: keeps sampling's counters apart from random tensors' (whose upper
// words are zero) and from the task generators' ("task").
inline constexpr std::uint32_t kSamplingTag = 0x73616D70u;  // "samp"

// u in (0, 1) for vocabulary entry `token` of sample `sample_id` at sequence position `position`:
// 24 random bits, offset by half a step so that neither 0 nor 1 occurs (both logs stay finite).
KILN_HD inline float sampling_uniform(std::uint64_t seed, std::uint64_t sample_id, std::int64_t position,
                                      std::int64_t token) {
  const auto w = philox::block({static_cast<std::uint32_t>(token), static_cast<std::uint32_t>(position),
                                static_cast<std::uint32_t>(sample_id),
                                static_cast<std::uint32_t>(sample_id >> 32) ^ kSamplingTag},
                               {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
  return (static_cast<float>(w[0] >> 8) + 0.5f) * 0x1.0p-24f;
}

// The Gumbel noise -log(-log(u)), in float (the same formula on both sides).
KILN_HD inline float gumbel(float u) { return -logf(-logf(u)); }

}  // namespace kiln::math
