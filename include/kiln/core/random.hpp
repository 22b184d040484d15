// Counter-based random numbers (Philox-4x32-10, Salmon et al., "Parallel random numbers: as easy
// as 1, 2, 3", SC'11). Element i of a random tensor is a pure function of (seed, offset + i), so
// the numbers do not depend on thread count or device, and a GPU kernel can produce the same
// values as the CPU.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "kiln/core/low_precision.hpp"  // KILN_HD

namespace kiln {

namespace philox {

// One Philox-4x32 block: 10 rounds of multiply-xorshift over a 128-bit counter with a 64-bit key.
// Host and device (kernels that draw random numbers compute the same words as the CPU).
KILN_HD inline std::array<std::uint32_t, 4> block(std::array<std::uint32_t, 4> ctr, std::array<std::uint32_t, 2> key) {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // multipliers from the paper
  constexpr std::uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(M0) * ctr[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(M1) * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += W0;
    key[1] += W1;
  }
  return ctr;
}

// The four 32-bit words for counter `index` under `seed`.
inline std::array<std::uint32_t, 4> at(std::uint64_t seed, std::uint64_t index) {
  return block({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), 0u, 0u},
               {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
}

}  // namespace philox

// Uniform in [0, 1) with 53 random bits.
inline double uniform_at(std::uint64_t seed, std::uint64_t index) {
  const auto w = philox::at(seed, index);
  const std::uint64_t bits = (static_cast<std::uint64_t>(w[0]) << 21) ^ (w[1] >> 11);
  return static_cast<double>(bits & ((1ull << 53) - 1)) * 0x1.0p-53;
}

// Standard normal by Box-Muller from two 32-bit words.
inline double normal_at(std::uint64_t seed, std::uint64_t index) {
  const auto w = philox::at(seed, index);
  const double u1 = (static_cast<double>(w[2]) + 1.0) * 0x1.0p-32;  // (0, 1]: log is finite
  const double u2 = static_cast<double>(w[3]) * 0x1.0p-32;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

// A seed and a running offset: each random tensor takes the next numel() counters, so successive
// draws differ and the state (two integers) can be saved in a checkpoint.
struct Generator {
  std::uint64_t seed = 0x5EEDull;
  std::uint64_t offset = 0;

  std::uint64_t take(std::uint64_t count) {
    const std::uint64_t start = offset;
    offset += count;
    return start;
  }
};

// The process-wide default generator (thread-local: each thread draws its own stream).
inline Generator& default_generator() {
  thread_local Generator g;
  return g;
}

inline void manual_seed(std::uint64_t seed) { default_generator() = Generator{seed, 0}; }

}  // namespace kiln
