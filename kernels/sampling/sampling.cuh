// Token sampling on CUDA (arguments kernels/sampling/args.hpp; front-end ops/sampling.hpp, whose
// header states the definitions; CPU reference backend/cpu/sampling.hpp).
//
// One block of 256 threads per row of logits. Every step is a block-wide reduction over the row:
//   1. m = max y (y = z / T; NaN counts as -inf); greedy rows stop at the argmax.
//   2. top-k threshold: the k-th largest y, found by bisection on the ordered 32-bit keys of the
//      floats: the bits of the largest key t with count(key(y_i) >= t) >= k, set one at a time
//      from the most significant (32 counting passes; the result is exactly the k-th largest).
//   3. top-p threshold: the same bisection on mass(t) = sum of exp(y_i - m) over kept y_i with
//      key >= t, for the largest t with mass(t) >= top_p * mass(kept) (32 summing passes).
//   4. the token: argmax over kept i of y_i + g_i (Gumbel noise from Philox, math/sampling.hpp),
//      ties to the lower index.
// The row is read from global memory on every pass (for a vocabulary of 2K-150K the row, 4-300 KB,
// stays in L2 across passes; a generation step samples at most a few hundred rows). Each pass
// costs V / 256 loads and compares per thread; a block-wide reduction costs two barriers.
// Sums are float in a fixed order: the same row gives the same token on every run of a GPU.
#pragma once

#include <cstdint>

#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/sampling/args.hpp"
#include "kiln/math/sampling.hpp"

namespace kiln::kernels::sampling {

constexpr int kThreads = 256;

// Floats as unsigned keys in the same order (-inf lowest; NaN never reaches here).
__device__ __forceinline__ std::uint32_t ordered_key(float f) {
  const std::uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct Candidate {  // a score and its index, for arg-max reductions
  float score;
  int index;
};

struct BetterCandidate {  // larger score wins; equal scores: the lower index
  __device__ __forceinline__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    if (a.score > b.score || (a.score == b.score && a.index < b.index)) return a;
    return b;
  }
};

struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class T>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleTokensArgs a) {
  const std::int64_t r = blockIdx.x;
  const T* row = static_cast<const T*>(a.logits) + r * a.vocab;
  const int V = static_cast<int>(a.vocab);
  const bool greedy = a.temperature == 0.0f;
  const float temperature = greedy ? 1.0f : a.temperature;
  auto y = [&](int i) {
    const float z = static_cast<float>(load(row[i]));
    return isnan(z) ? -INFINITY : z / temperature;
  };

  if (greedy) {
    Candidate best{-INFINITY, V};
    for (int i = threadIdx.x; i < V; i += kThreads) best = BetterCandidate{}(best, Candidate{y(i), i});
    best = block_all_reduce<kThreads>(best, BetterCandidate{}, Candidate{-INFINITY, V});
    if (threadIdx.x == 0) a.tokens[r] = best.index < V ? best.index : 0;
    return;
  }

  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kThreads) m = fmaxf(m, y(i));
  m = block_all_reduce<kThreads>(m, Max{}, -INFINITY);

  // Smallest key kept (0 keeps everything).
  std::uint32_t floor = 0;
  if (a.top_k > 0 && a.top_k < a.vocab) {
    const int k = static_cast<int>(a.top_k);
    for (int bit = 31; bit >= 0; --bit) {
      const std::uint32_t candidate = floor | (1u << bit);
      int n = 0;
      for (int i = threadIdx.x; i < V; i += kThreads) n += ordered_key(y(i)) >= candidate;
      if (block_all_reduce<kThreads>(n, Plus{}, 0) >= k) floor = candidate;
    }
  }
  if (a.top_p < 1.0f && m > -INFINITY) {
    float kept = 0.0f;
    for (int i = threadIdx.x; i < V; i += kThreads) {
      const float v = y(i);
      if (ordered_key(v) >= floor) kept += expf(v - m);
    }
    const float target = a.top_p * block_all_reduce<kThreads>(kept, Plus{}, 0.0f);
    // mass(max(t, floor)) falls as t grows and is the whole kept mass (>= target) for t <= floor,
    // so the bisection over all 32 bits ends at the largest t >= floor that keeps target mass.
    std::uint32_t t = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const std::uint32_t candidate = t | (1u << bit);
      const std::uint32_t lowest = candidate > floor ? candidate : floor;
      float mass = 0.0f;
      for (int i = threadIdx.x; i < V; i += kThreads) {
        const float v = y(i);
        if (ordered_key(v) >= lowest) mass += expf(v - m);
      }
      if (block_all_reduce<kThreads>(mass, Plus{}, 0.0f) >= target) t = candidate;
    }
    if (t < floor) t = floor;
    floor = t;
  }

  Candidate best{-INFINITY, V};
  const std::uint64_t id = static_cast<std::uint64_t>(a.sample_ids[r]);
  const std::int64_t position = a.positions[r];
  for (int i = threadIdx.x; i < V; i += kThreads) {
    const float v = y(i);
    if (v == -INFINITY || ordered_key(v) < floor) continue;
    const float score = v + math::gumbel(math::sampling_uniform(a.seed, id, position, i));
    best = BetterCandidate{}(best, Candidate{score, i});
  }
  best = block_all_reduce<kThreads>(best, BetterCandidate{}, Candidate{-INFINITY, V});
  if (threadIdx.x == 0) a.tokens[r] = best.index < V ? best.index : 0;
}

inline void launch_sample_tokens(const SampleTokensArgs& a) {
  if (a.rows == 0) return;
  check(a.vocab <= 0x7fffffff, "sample_tokens", "vocabularies over 2^31 - 1 entries are not supported, got ",
        a.vocab);
  cuda::DeviceGuard guard(a.launch.device);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    sample_kernel<T><<<static_cast<unsigned>(a.rows), kThreads, 0, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  };
  switch (a.dtype) {
    case DType::f32: return run(float{});
    case DType::f64: return run(double{});
    case DType::bf16: return run(bf16{});
    case DType::f16: return run(fp16{});
    default: fail("sample_tokens", "has no CUDA kernel for logits of dtype ", a.dtype);
  }
}

inline const bool sampling_registered = register_device_kernel(&launch_sample_tokens);

}  // namespace kiln::kernels::sampling
