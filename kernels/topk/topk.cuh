// topk along one dim (arguments kernels/topk/args.hpp: TopkArgs; front-end ops/topk.hpp, CPU
// reference backend/cpu/topk.hpp): the k best entries of every line and their positions. values
// and indices have src's shape with dim resized to k; all three any strides. Floating dtypes.
//
// Ranking, the same strict total order as the CPU kernel: better value first, equal values lower
// position first, NaN above every number (first when largest, last otherwise), -0 equal to +0.
// Each entry becomes one unsigned key whose integer order is that ranking: the value's bits mapped
// to an order-preserving unsigned "score" (sign flipped for positives, all bits for negatives; one
// canonical NaN above +inf; -0 folded into +0; complemented for smallest), then the complemented
// position below it. For float/bf16/fp16 (scored in float) score and position pack into one 64-bit
// word, so comparing entries is one integer compare; doubles keep a 64-bit score and the position
// side by side. Keys are unique (positions differ), so the selection and its order never depend
// on how the work is split. Values are re-read from src at the chosen positions (NaN payloads and
// all, as the CPU copies the element).
//
// Four paths, by line length n and k:
//   - warp (k <= 32, n <= 512; MoE routing: 8 of 256 experts over millions of tokens): one warp per
//     line holds the line in registers (ITEMS = n/32 keys per lane, coalesced loads), each lane
//     sorts its ITEMS keys (an unrolled bitonic network), then k rounds of a warp-wide max over the
//     lanes' first keys (__reduce_max_sync on the key's 32-bit words: one instruction for bf16,
//     whose score and position share 32 bits; two for float); the lane that held the winner shifts
//     its list by one. Traffic: the line read once, k values + k indices written; about 150 (bf16)
//     to 300 (float) instructions per line of 256, so the kernel stays near memory speed.
//   - block (n up to 4096 float / 2048 double keys, any k): one block sorts the line's keys in
//     shared memory with a bitonic network (32 KB of keys), writes the first k; unsorted output
//     re-sorts those k by position.
//   - chunks (longer lines, k up to a quarter of the block size: top-k sampling over a vocabulary):
//     the block kernel on chunks of the line writes each chunk's best k keys to a candidate buffer,
//     and the same kernel runs again over the candidates (each pass shrinks the line at least 2x)
//     until one block holds the line. Exact: the top k of the line are among the top k of each
//     chunk, and keys carry their original positions.
//   - sort (long lines with large k): every (line, position) pair is radix-sorted by key and then,
//     stably, by line (kernels/common/radix_sort.cuh); each line's first k pairs are its answer. Unsorted output
//     places each chosen element by an exclusive scan of 0/1 flags over the lines' positions.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/offsets.cuh"
#include "kiln/kernels/common/radix_sort.cuh"
#include "kiln/kernels/common/scan.cuh"
#include "kiln/kernels/topk/args.hpp"

namespace kiln::kernels::topk {

// Order-preserving unsigned scores: larger score = better entry.
__device__ __forceinline__ std::uint32_t topk_score(float v, bool largest) {
  std::uint32_t u = 0xffffffffu;  // NaN
  if (v == v) {
    u = __float_as_uint(v == 0.0f ? 0.0f : v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return largest ? u : ~u;
}
__device__ __forceinline__ std::uint64_t topk_score(double v, bool largest) {
  std::uint64_t u = ~0ull;
  if (v == v) {
    u = static_cast<std::uint64_t>(__double_as_longlong(v == 0.0 ? 0.0 : v));
    u = (u >> 63) ? ~u : (u | (1ull << 63));
  }
  return largest ? u : ~u;
}

template <class C>
struct TopkKey;

// Scores of float values: score << 32 | ~position.
template <>
struct TopkKey<float> {
  static constexpr int score_bits = 32;
  std::uint64_t bits;

  static __device__ TopkKey make(float v, std::uint32_t position, bool largest) {
    return {(static_cast<std::uint64_t>(topk_score(v, largest)) << 32) | static_cast<std::uint32_t>(~position)};
  }
  // Ranked by position alone (lower first): unsorted output re-sorts the chosen k with these.
  static __device__ TopkKey by_position(std::uint32_t position) { return {static_cast<std::uint32_t>(~position)}; }
  // Below every real key (whose low word ~position is never 0).
  static __device__ TopkKey worst() { return {0}; }
  // The rank as a sort key: smaller = better.
  static __device__ std::uint64_t sort_key(float v, bool largest) { return static_cast<std::uint32_t>(~topk_score(v, largest)); }

  __device__ std::uint32_t position() const { return ~static_cast<std::uint32_t>(bits); }
  __device__ bool better(const TopkKey& o) const { return bits > o.bits; }
  __device__ bool operator==(const TopkKey& o) const { return bits == o.bits; }
  // The best key of the warp (every lane calls): max of the high words, then of the low words
  // among the lanes that hold that high word.
  __device__ TopkKey warp_best() const {
    const unsigned hi = static_cast<unsigned>(bits >> 32), lo = static_cast<unsigned>(bits);
    const unsigned best_hi = __reduce_max_sync(0xffffffffu, hi);
    const unsigned best_lo = __reduce_max_sync(0xffffffffu, hi == best_hi ? lo : 0u);
    return {(static_cast<std::uint64_t>(best_hi) << 32) | best_lo};
  }
};

// Scores of doubles: a 64-bit score, then ~position.
template <>
struct TopkKey<double> {
  static constexpr int score_bits = 64;
  std::uint64_t score;
  std::uint32_t inverse_position;

  static __device__ TopkKey make(double v, std::uint32_t position, bool largest) {
    return {topk_score(v, largest), ~position};
  }
  static __device__ TopkKey by_position(std::uint32_t position) { return {0, ~position}; }
  static __device__ TopkKey worst() { return {0, 0}; }
  static __device__ std::uint64_t sort_key(double v, bool largest) { return ~topk_score(v, largest); }

  __device__ std::uint32_t position() const { return ~inverse_position; }
  __device__ bool better(const TopkKey& o) const {
    return score > o.score || (score == o.score && inverse_position > o.inverse_position);
  }
  __device__ bool operator==(const TopkKey& o) const { return score == o.score && inverse_position == o.inverse_position; }
  __device__ TopkKey warp_best() const {
    const unsigned hi = static_cast<unsigned>(score >> 32), lo = static_cast<unsigned>(score);
    const unsigned best_hi = __reduce_max_sync(0xffffffffu, hi);
    const bool has_hi = hi == best_hi;
    const unsigned best_lo = __reduce_max_sync(0xffffffffu, has_hi ? lo : 0u);
    const bool has_score = has_hi && lo == best_lo;
    const unsigned best_pos = __reduce_max_sync(0xffffffffu, has_score ? inverse_position : 0u);
    return {(static_cast<std::uint64_t>(best_hi) << 32) | best_lo, best_pos};
  }
};

// The warp path's key for bf16 inputs: a bf16 value's float score has 16 meaningful bits (its low
// half is all zeros or all ones), so score and a 16-bit position (lines of the warp path are at most
// 512 long) fit in 32 bits, and a warp-wide max is one __reduce_max_sync.
struct TopkKeyBf16 {
  std::uint32_t bits;  // score >> 16 << 16 | ~position (16 bits)

  static __device__ TopkKeyBf16 make(float v, std::uint32_t position, bool largest) {
    return {(topk_score(v, largest) & 0xffff0000u) | (~position & 0xffffu)};
  }
  static __device__ TopkKeyBf16 worst() { return {0}; }

  __device__ std::uint32_t position() const { return ~bits & 0xffffu; }
  __device__ bool better(const TopkKeyBf16& o) const { return bits > o.bits; }
  __device__ bool operator==(const TopkKeyBf16& o) const { return bits == o.bits; }
  __device__ TopkKeyBf16 warp_best() const { return {__reduce_max_sync(0xffffffffu, bits)}; }
};

// Sorts N (a power of two) keys held in registers, best first: a bitonic network, fully unrolled so
// every index is a compile-time constant (the keys stay in registers).
template <int N, class Key>
__device__ __forceinline__ void sort_in_registers(Key (&keys)[N]) {
#pragma unroll
  for (int size = 2; size <= N; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int j = i ^ stride;
        if (j > i) {
          const bool best_first = (i & size) == 0;
          const Key a = keys[i], b = keys[j];
          if (best_first ? b.better(a) : a.better(b)) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
    }
  }
}

// Where each line's elements live. geo: the line grid (src's dims except `dim`) with strides
// {src, values, indices}; along: their strides along `dim`. CONTIGUOUS (all three row-major and
// dim last) skips the offset arithmetic: line r starts at r * n in src and r * k in the outputs.
struct TopkLines {
  Offsets<3> geo;
  std::int64_t along[3];
};

template <bool CONTIGUOUS>
__device__ __forceinline__ void line_at(const TopkLines& lines, std::int64_t row, std::int64_t n, std::int64_t k,
                                        std::int64_t (&off)[3], std::int64_t (&along)[3]) {
  if constexpr (CONTIGUOUS) {
    off[0] = row * n;
    off[1] = off[2] = row * k;
    along[0] = along[1] = along[2] = 1;
  } else {
    lines.geo.at(row, off);
#pragma unroll
    for (int i = 0; i < 3; ++i) along[i] = lines.along[i];
  }
}

template <class T, int ITEMS, bool CONTIGUOUS>
__global__ void __launch_bounds__(256, 2) topk_warp(T* __restrict__ values, std::int64_t* __restrict__ indices,
                                                    const T* __restrict__ src, const __grid_constant__ TopkLines lines,
                                                    std::int64_t rows, std::int64_t n, int k, bool largest, bool sorted) {
  using Key = std::conditional_t<std::is_same_v<T, bf16>, TopkKeyBf16, TopkKey<compute_t<T>>>;
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps) {
    std::int64_t off[3], along[3];
    line_at<CONTIGUOUS>(lines, row, n, k, off, along);
    Key keys[ITEMS];  // this lane's entries (positions lane, lane + 32, ...), then sorted best first
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j = i * 32 + lane;
      keys[i] = j < n ? Key::make(load(src[off[0] + j * along[0]]), j, largest) : Key::worst();
    }
    sort_in_registers(keys);
    Key mine = Key::worst();  // lane r ends with the r-th best
    for (int r = 0; r < k; ++r) {
      const Key top = keys[0].warp_best();
      if (lane == r) mine = top;
      if (keys[0] == top) {  // this lane held it: its next best moves up
#pragma unroll
        for (int i = 0; i + 1 < ITEMS; ++i) keys[i] = keys[i + 1];
        keys[ITEMS - 1] = Key::worst();
      }
    }
    const std::uint32_t position = mine.position();
    int slot = lane;
    if (!sorted) {  // rank among the chosen by position
      slot = 0;
      for (int l = 0; l < k; ++l) slot += __shfl_sync(0xffffffffu, position, l) < position;
    }
    if (lane < k) {
      values[off[1] + slot * along[1]] = src[off[0] + static_cast<std::int64_t>(position) * along[0]];
      indices[off[2] + slot * along[2]] = position;
    }
  }
}

// Sorts count (a power of two) keys in shared memory, best first. Every thread of the block calls.
template <class Key>
__device__ void bitonic_sort(Key* keys, int count) {
  for (int size = 2; size <= count; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < count / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const Key a = keys[lo], b = keys[hi];
        const bool best_first = (lo & size) == 0;  // direction of this run of the network
        if (best_first ? b.better(a) : a.better(b)) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

// One block per (line, chunk of `chunk` entries of the current candidate line of `length`).
// Entries come from src (candidates == nullptr) or from the previous pass's candidate keys. With
// `next` the chunk's best k keys go there ([rows, chunks, k]); otherwise (one chunk) the line's
// answer goes to values/indices.
template <class T, bool CONTIGUOUS>
__global__ void topk_block(T* __restrict__ values, std::int64_t* __restrict__ indices, const T* __restrict__ src,
                           const __grid_constant__ TopkLines lines, const TopkKey<compute_t<T>>* __restrict__ candidates,
                           TopkKey<compute_t<T>>* __restrict__ next, std::int64_t rows, std::int64_t n,
                           std::int64_t length, std::int64_t chunk, std::int64_t chunks, int count, int k,
                           bool largest, bool sorted) {
  using Key = TopkKey<compute_t<T>>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Key* keys = reinterpret_cast<Key*>(shared_bytes);
  for (std::int64_t block = blockIdx.x; block < rows * chunks; block += gridDim.x) {
    std::int64_t c;
    const std::int64_t row = divmod(block, chunks, c);
    std::int64_t off[3], along[3];
    line_at<CONTIGUOUS>(lines, row, n, k, off, along);
    const std::int64_t begin = c * chunk;
    const int len = static_cast<int>(chunk < length - begin ? chunk : length - begin);
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
      Key key = Key::worst();
      if (i < len) {
        const std::int64_t j = begin + i;
        key = candidates ? candidates[row * length + j]
                         : Key::make(load(src[off[0] + j * along[0]]), static_cast<std::uint32_t>(j), largest);
      }
      keys[i] = key;
    }
    __syncthreads();
    bitonic_sort(keys, count);
    if (next) {
      for (int i = threadIdx.x; i < k; i += blockDim.x) next[block * k + i] = keys[i];  // worst beyond len
    } else {
      if (!sorted) {
        int kc = 1;
        while (kc < k) kc <<= 1;
        for (int i = threadIdx.x; i < kc; i += blockDim.x)
          keys[i] = i < k ? Key::by_position(keys[i].position()) : Key::worst();
        __syncthreads();
        bitonic_sort(keys, kc);
      }
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const std::uint32_t position = keys[i].position();
        values[off[1] + i * along[1]] = src[off[0] + static_cast<std::int64_t>(position) * along[0]];
        indices[off[2] + i * along[2]] = position;
      }
    }
    __syncthreads();  // keys are refilled for the next block
  }
}

// The sort path: keys[q] = rank of entry q = row * n + j (smaller = better), items[q] = q.
template <class T, bool CONTIGUOUS>
__global__ void topk_sort_keys(const T* __restrict__ src, const __grid_constant__ TopkLines lines, std::int64_t rows,
                               std::int64_t n, std::int64_t k, bool largest, std::int64_t* __restrict__ keys,
                               std::int64_t* __restrict__ items) {
  using Key = TopkKey<compute_t<T>>;
  for (std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < rows * n;
       q += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t j;
    const std::int64_t row = divmod(q, n, j);
    std::int64_t off[3], along[3];
    line_at<CONTIGUOUS>(lines, row, n, k, off, along);
    keys[q] = static_cast<std::int64_t>(Key::sort_key(load(src[off[0] + j * along[0]]), largest));
    items[q] = q;
  }
}

// keys[i] = the line of sorted item i, for the second (stable) sort by line.
static __global__ void topk_line_keys(const std::int64_t* __restrict__ items, std::int64_t total, std::int64_t n,
                               std::int64_t* __restrict__ keys) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t j;
    keys[i] = divmod(items[i], n, j);
  }
}

// flags[q] = 1 for the first k items of each line (flags zeroed before).
static __global__ void topk_mark(const std::int64_t* __restrict__ items, std::int64_t rows, std::int64_t n, std::int64_t k,
                          std::int64_t* __restrict__ flags) {
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * k;
       t += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t i;
    const std::int64_t row = divmod(t, k, i);
    flags[items[row * n + i]] = 1;
  }
}

// Writes the first k items of each line: at rank i (sorted), or at the item's position among the
// chosen (slots: exclusive scan of the flags).
template <class T, bool CONTIGUOUS>
__global__ void topk_write(T* __restrict__ values, std::int64_t* __restrict__ indices, const T* __restrict__ src,
                           const __grid_constant__ TopkLines lines, const std::int64_t* __restrict__ items,
                           const std::int64_t* __restrict__ slots, std::int64_t rows, std::int64_t n, std::int64_t k) {
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * k;
       t += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t i;
    const std::int64_t row = divmod(t, k, i);
    const std::int64_t q = items[row * n + i];
    const std::int64_t position = q - row * n;
    const std::int64_t slot = slots ? slots[q] - row * k : i;
    std::int64_t off[3], along[3];
    line_at<CONTIGUOUS>(lines, row, n, k, off, along);
    values[off[1] + slot * along[1]] = src[off[0] + position * along[0]];
    indices[off[2] + slot * along[2]] = position;
  }
}

inline constexpr int kTopkBlockBytes = 32 * 1024;  // shared memory for one block's keys

inline int pow2_at_least(std::int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

template <class T, bool CONTIGUOUS>
void launch_lines(const TopkArgs& a, const TopkLines& lines, std::int64_t rows, std::int64_t n) {
  using Key = TopkKey<compute_t<T>>;
  const int device = a.launch.device;
  const cudaStream_t stream = a.launch.stream;
  const std::int64_t k = a.k;
  const bool largest = a.largest, sorted = a.sorted;
  auto* pv = a.values.as<T>();
  auto* pi = a.indices.as<std::int64_t>();
  const auto* ps = a.src.as<const T>();
  const int kk = static_cast<int>(k);

  if (k <= 32 && n <= 512) {
    const unsigned grid = blocks_for(rows, 256 / 32);
    auto launch = [&](auto items) {
      topk_warp<T, decltype(items)::value, CONTIGUOUS>
          <<<grid, 256, 0, stream>>>(pv, pi, ps, lines, rows, n, kk, largest, sorted);
    };
    if (n <= 32) launch(std::integral_constant<int, 1>{});
    else if (n <= 64) launch(std::integral_constant<int, 2>{});
    else if (n <= 128) launch(std::integral_constant<int, 4>{});
    else if (n <= 256) launch(std::integral_constant<int, 8>{});
    else launch(std::integral_constant<int, 16>{});
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }

  constexpr int kMaxCount = kTopkBlockBytes / static_cast<int>(sizeof(Key));
  if (n <= kMaxCount || k <= kMaxCount / 4) {
    // Block passes: over chunks of kMaxCount keys while the candidate line is longer than that.
    Tensor<std::uint8_t> held;  // the candidates the next pass reads
    const Key* candidates = nullptr;
    std::int64_t length = n;
    while (true) {
      const std::int64_t chunks = (length + kMaxCount - 1) / kMaxCount;
      const int count = chunks == 1 ? pow2_at_least(length) : kMaxCount;
      const int threads = std::max(32, std::min(512, count / 2));
      const unsigned grid = blocks_for(rows * chunks, 1);
      const std::size_t shared = static_cast<std::size_t>(count) * sizeof(Key);
      if (chunks == 1) {
        topk_block<T, CONTIGUOUS><<<grid, threads, shared, stream>>>(pv, pi, ps, lines, candidates, nullptr, rows, n,
                                                                     length, length, 1, count, kk, largest, sorted);
        KILN_CUDA_CHECK_LAUNCH();
        return;
      }
      Tensor<std::uint8_t> next_keys({rows * chunks * k * static_cast<std::int64_t>(sizeof(Key))}, Device::cuda(device));
      auto* next = reinterpret_cast<Key*>(next_keys.data());
      topk_block<T, CONTIGUOUS><<<grid, threads, shared, stream>>>(pv, pi, ps, lines, candidates, next, rows, n, length,
                                                                   kMaxCount, chunks, count, kk, largest, sorted);
      KILN_CUDA_CHECK_LAUNCH();
      held = next_keys;
      candidates = next;
      length = chunks * k;
    }
  }

  // Sort path: by rank, then stably by line; each line's first k items are its answer.
  const std::int64_t total = rows * n;
  Tensor<std::int64_t> keys({total}, Device::cuda(device)), items({total}, Device::cuda(device));
  const unsigned grid = blocks_for(total, 256);
  topk_sort_keys<T, CONTIGUOUS><<<grid, 256, 0, stream>>>(ps, lines, rows, n, k, largest, keys.data(), items.data());
  KILN_CUDA_CHECK_LAUNCH();
  radix_sort_pairs(keys, items, total, Key::score_bits, device, stream);
  topk_line_keys<<<grid, 256, 0, stream>>>(items.data(), total, n, keys.data());
  KILN_CUDA_CHECK_LAUNCH();
  radix_sort_pairs(keys, items, total, bits_for(static_cast<std::uint64_t>(rows - 1)), device, stream);
  Tensor<std::int64_t> slots;
  if (!sorted) {
    slots = Tensor<std::int64_t>({total}, Device::cuda(device));
    KILN_CUDA_CHECK(cudaMemsetAsync(slots.data(), 0, static_cast<std::size_t>(total) * sizeof(std::int64_t), stream));
    topk_mark<<<blocks_for(rows * k, 256), 256, 0, stream>>>(items.data(), rows, n, k, slots.data());
    KILN_CUDA_CHECK_LAUNCH();
    exclusive_scan(slots.data(), total, device, stream);
  }
  topk_write<T, CONTIGUOUS><<<blocks_for(rows * k, 256), 256, 0, stream>>>(
      pv, pi, ps, lines, items.data(), sorted ? nullptr : slots.data(), rows, n, k);
  KILN_CUDA_CHECK_LAUNCH();
}

inline void launch_topk(const TopkArgs& a) {
  const TensorView& values = a.values;
  const TensorView& indices = a.indices;
  const TensorView& src = a.src;
  const int dim = a.dim;
  const std::int64_t n = src.shape[dim];
  if (a.k == 0 || values.numel() == 0) return;
  const std::int64_t rows = src.numel() / n;
  check(n < (std::int64_t{1} << 31), "topk", "lines longer than 2^31 - 1 elements are not supported on CUDA (", n, ")");
  cuda::DeviceGuard guard(a.launch.device);
  TopkLines lines;
  lines.geo = offsets_without(src, dim, {&src, &values, &indices});
  lines.along[0] = src.strides[dim];
  lines.along[1] = values.strides[dim];
  lines.along[2] = indices.strides[dim];
  const bool contiguous =
      dim == src.ndim - 1 && src.is_contiguous() && values.is_contiguous() && indices.is_contiguous();
  with_floating_type("topk", src.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (contiguous) launch_lines<T, true>(a, lines, rows, n);
    else launch_lines<T, false>(a, lines, rows, n);
  });
}

inline const bool topk_registered = register_device_kernel(&launch_topk);

}  // namespace kiln::kernels::topk
