// The Hopper grouped GEMM's weight gradient split along its reduction (grouped_gemm_hopper.cuh):
// dW_g = Σ_{r in group g} dy[r]ᵀ x[r] summed in chunks of C rows, the chunks of one output tile
// handed from CTA to CTA in a fixed order.
//
// Why. Unsplit, a wgrad unit is one 128 × BN tile of dW_g summed over all of the group's rows, so
// (1) the unit count G · tiles may fall just past a multiple of the SMs (kiln's big config, GEMM1:
// 8 × 24 = 192 units on 132 SMs: two rounds for 1.45 rounds of work; GEMM2: 96 units leave 36 SMs
// idle), and (2) the biggest expert sets the time: early in training one expert may get 2.4× the
// mean rows (MaxVio 1.4), and its units run 2.4× longer than the others (measured on an H100: the
// two wgrads ran at 353 and 211 TFLOP/s in the training step against 472 and 414 in the benchmark
// of even-ish groups). Chunks of C rows make units of at most C rows, many more of them.
//
// Order and hand-off. Units are numbered level-major: unit u = (level j, group g, tile t) with
// u = (j · G + g) · tiles + t; group g has n_g = max(1, ceil(M_g / C)) chunks, and units with
// j ≥ n_g are empty (skipped by producer and consumers alike). Chunk j of a tile adds its partial
// sum to the tile's FP32 accumulator in the workspace after chunk j − 1 did (a flag per tile holds
// the number of chunks added), so the sum is ((p_0 + p_1) + p_2) + ... in every run: deterministic.
// The last chunk adds the accumulator to its registers and stores dW_g as before. A chunk waits only
// for a unit of a lower number, and with one CTA per SM (the grid never exceeds the SM count) every
// CTA is resident, so the lowest unfinished unit can always proceed: no deadlock. Chunk j − 1 of a
// tile is a whole level (G · tiles units) earlier, usually more than a round of the grid, so the
// wait is usually over before it starts.
//
// Cost. Every chunk but the last writes 128 · BN floats and every chunk but the first reads them
// (256 KB a hand-off at BN = 256), from L2 when the workspace (G · N · K floats: 25 MB for the big
// config's GEMM1) fits, else DRAM. plan_wgrad_chunks weighs that against the rounds saved.
//
// Status (2026-12-07): correct and deterministic on an H100 (GroupedGemmCuda.WgradChunks...), but
// not shown to pay: the big config's step ran 1.01x with the planned chunks (one run each, within
// the spread between runs) and the benchmark's wgrad rows with them (H100: GEMM1 429, GEMM2 344
// TFLOP/s at 128 x 256 tiles) were below the unchunked kernel's on an H200 two days before (472,
// 414; another card). Not yet measured: where the time goes (the hand-offs' 256 KB each, the waits
// of chunks that run beside their predecessor, the rounds left uneven by the empty units of
// groups with fewer chunks). So the plan runs only when asked for (KILN_GROUPED_WGRAD_CHUNKS=on,
// or GroupedGemmArgs::wgrad_chunk_rows), until a same-call A/B says where it pays.
#pragma once

#include <cstdint>

#include "kiln/kernels/common/sm90/warpgroup.cuh"

namespace kiln::kernels::grouped_gemm {

// Host: rows per chunk (a multiple of 64) for R rows in G groups of `tiles` output tiles each on
// `sms` CTAs, or R (no split: one chunk a group) where splitting saves less than a tenth. The model
// is a balanced split: s chunks a group make ceil(G·tiles·s / sms) rounds of C = ceil(R/G/s) rows;
// each hand-off costs about as much as `handoff_rows` rows of a unit (measured order: 2-3 us from
// L2, ~10 us from DRAM, against ~1 us per 64 rows of a 128 × 256 unit).
inline std::int64_t plan_wgrad_chunks(std::int64_t R, int G, int tiles, int sms, bool workspace_in_l2) {
  constexpr std::int64_t kMinChunk = 256;
  const std::int64_t handoff_rows = workspace_in_l2 ? 192 : 768;
  const std::int64_t mean = (R + G - 1) / G;
  const auto round64 = [](std::int64_t v) { return (v + 63) / 64 * 64; };
  const auto rounds = [&](std::int64_t s) { return (static_cast<std::int64_t>(G) * tiles * s + sms - 1) / sms; };
  const std::int64_t unsplit = rounds(1) * mean;
  std::int64_t best = R, best_cost = unsplit;
  for (std::int64_t s = 2; s <= 16; ++s) {
    const std::int64_t chunk = round64((mean + s - 1) / s);
    if (chunk < kMinChunk) break;
    const std::int64_t cost = rounds(s) * chunk + (s - 1) * handoff_rows;
    if (cost < best_cost) {
      best_cost = cost;
      best = chunk;
    }
  }
  return best_cost * 10 < unsplit * 9 ? best : R;
}

// Device: the consumers' side of the hand-off, `threads` threads (the consumer warpgroups) on
// hardware barrier `barrier`, thread 0 of them (`first`) polling and signalling. The accumulator
// tile lives in the workspace in the consumers' register order: float4 i of consumer thread c at
// index i · threads + c, so that a warp's loads and stores cover 512 contiguous bytes.

// Waits until `count` chunks have been added into the tile (the flag), then adds them to acc.
template <int N>
__device__ inline void add_previous_chunks(float (&acc)[N], const float4* tile, const int* flag, int count,
                                           int thread, int threads, bool first, int barrier) {
  if (first) {
    while (*reinterpret_cast<const volatile int*>(flag) != count) __nanosleep(32);
    __threadfence();  // the flag seen before the tile's values
  }
  sm90::named_barrier_sync(barrier, threads);
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    const float4 v = __ldcg(tile + i * threads + thread);  // L2: another SM wrote it
    acc[4 * i] += v.x;
    acc[4 * i + 1] += v.y;
    acc[4 * i + 2] += v.z;
    acc[4 * i + 3] += v.w;
  }
}

// Stores acc as the tile's running sum and raises the flag to `count` (chunks added so far).
template <int N>
__device__ inline void hand_on_chunks(const float (&acc)[N], float4* tile, int* flag, int count, int thread,
                                      int threads, bool first, int barrier) {
#pragma unroll
  for (int i = 0; i < N / 4; ++i)
    __stcg(tile + i * threads + thread, make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]));
  sm90::named_barrier_sync(barrier, threads);
  if (first) {
    __threadfence();  // every consumer's stores (ordered before by the barrier) before the flag
    atomicExch(flag, count);
  }
}

}  // namespace kiln::kernels::grouped_gemm
