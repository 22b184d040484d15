// Row selection and its adjoint, for embedding and index_select (arguments
// kernels/gather/args.hpp: IndexSelectRowsArgs, IndexAddRowsArgs; front-ends ops/embedding.hpp,
// ops/gather.hpp; CPU reference backend/cpu/gather.hpp). Both see their tensors as contiguous
// [outer, rows, inner] blocks:
//
//   index_select_rows: out[o][j][:] = src[o][index[j]][:]. Any dtype.
//   index_add_rows:    dst[o][r][:] = (accumulate ? dst[o][r][:] : 0) + sum of src[o][j][:] over
//                      the j with index[j] == r, in ascending j; row `skip` (>= 0) gets nothing.
//                      Floating dtypes.
//
// Selection is a pure copy, so it moves raw words: the widest of 16/8/4/2/1 bytes that divides the
// row and both base addresses (16-byte vectors for any dtype when rows are 16-byte multiples, e.g.
// an embedding dim of 7168 in bf16 = 896 vectors). A group of G threads (G a power of two up to
// 128, about the row's vector count) copies one row; one thread reads the row's index and
// validates it (out-of-range ids are flagged, see kernels/gather/common.cuh). Traffic: each selected row read
// once and written once, plus 8 B of index per row: bandwidth-bound.
//
// The adjoint must sum rows that share an index, deterministically and without float atomics. The
// (index[j], j) pairs are sorted by index with the stable radix sort (kernels/common/radix_sort.cuh), so each
// destination row's sources lie together in ascending j; a binary search per row finds its bucket.
// Then one group of threads per destination row walks its bucket in that order, each thread
// summing its own 16-byte column slice in compute precision (float for bf16/fp16, double for
// double) from 0 — the same additions in the same order as the CPU's index_add_rows, so a float
// gradient is bit-identical to the CPU one. Every destination row is written (zeros when no index
// names it), so the backward needs no separate zero fill: traffic is the destination written once
// plus each source row read once, the minimum for a dense gradient. A row that many indices name
// (a frequent token) is summed by one group serially; its loads are batched four at a time to keep
// memory busy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kiln/core/tensor.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/offsets.cuh"
#include "kiln/kernels/common/radix_sort.cuh"
#include "kiln/kernels/gather/args.hpp"
#include "kiln/kernels/gather/common.cuh"

namespace kiln::kernels::gather {

inline constexpr int kRowThreads = 256;

// Row-group shape of a launch: 2^log_group threads per row.
inline int log_group_for(std::int64_t vectors_per_row) {
  int log = 0;
  while (log < 7 && (std::int64_t{2} << log) <= vectors_per_row) ++log;
  return log;
}

template <class W>
__global__ void __launch_bounds__(kRowThreads) select_rows(W* __restrict__ out, const W* __restrict__ src,
                                                            const std::int64_t* __restrict__ index,
                                                            std::int64_t outer, std::int64_t size, std::int64_t n,
                                                            std::int64_t words, int log_group,
                                                            unsigned long long* flag) {
  const int sub = threadIdx.x & ((1 << log_group) - 1);
  const std::int64_t rows_per_block = kRowThreads >> log_group;
  const std::int64_t rows = outer * n;
  for (std::int64_t row = blockIdx.x * rows_per_block + (threadIdx.x >> log_group); row < rows;
       row += static_cast<std::int64_t>(gridDim.x) * rows_per_block) {
    std::int64_t j;
    const std::int64_t o = divmod(row, n, j);
    const std::int64_t id = index[j];
    if (id < 0 || id >= size) {
      if (sub == 0) flag_bad_index(flag, j);
      continue;
    }
    const W* from = src + (o * size + id) * words;
    W* to = out + row * words;
#pragma unroll 4
    for (std::int64_t w = sub; w < words; w += (1 << log_group)) to[w] = from[w];
  }
}

inline void launch_index_select_rows(const IndexSelectRowsArgs& a) {
  std::int64_t outer = a.outer, inner = a.inner;
  const std::int64_t size = a.size, n = a.n;
  if (n == 0) return;
  if (outer * inner == 0) {  // nothing to copy, but the ids are still checked
    outer = 1;
    inner = 0;
  }
  cuda::DeviceGuard guard(a.launch.device);
  const std::int64_t row_bytes = inner * dtype_size(a.dtype);
  int word = 16;
  while (word > 1 && (row_bytes % word != 0 || reinterpret_cast<std::uintptr_t>(a.out) % word != 0 ||
                      reinterpret_cast<std::uintptr_t>(a.src) % word != 0))
    word /= 2;
  const std::int64_t words = row_bytes / word;
  const int log_group = log_group_for(words);
  const unsigned grid = blocks_for(outer * n, kRowThreads >> log_group);
  with_word(word, [&](auto tag) {
    using W = decltype(tag);
    select_rows<W><<<grid, kRowThreads, 0, a.launch.stream>>>(static_cast<W*>(a.out), static_cast<const W*>(a.src),
                                                              a.index, outer, size, n, words, log_group,
                                                              flag_word(a.first_bad));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

// keys[j] = index[j], positions[j] = j: the pairs the backward sorts.
static __global__ void index_pairs(const std::int64_t* __restrict__ index, std::int64_t n, std::int64_t* __restrict__ keys,
                            std::int64_t* __restrict__ positions) {
  for (std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    keys[j] = index[j];
    positions[j] = j;
  }
}

// start[r] = first slot of the sorted keys holding a key >= r, for r in [0, size].
static __global__ void bucket_starts(const std::int64_t* __restrict__ sorted, std::int64_t n, std::int64_t size,
                              std::int64_t* __restrict__ start) {
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r <= size;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t lo = 0, hi = n;
    while (lo < hi) {
      const std::int64_t mid = (lo + hi) >> 1;
      if (sorted[mid] < r) lo = mid + 1;
      else hi = mid;
    }
    start[r] = lo;
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kRowThreads, 4) add_rows(T* __restrict__ dst, const T* __restrict__ src,
                                                         const std::int64_t* __restrict__ order,
                                                         const std::int64_t* __restrict__ start, std::int64_t outer,
                                                         std::int64_t size, std::int64_t n, std::int64_t vectors,
                                                         int log_group, std::int64_t skip, bool accumulate) {
  using C = compute_t<T>;
  using Vector = Vec<T, V>;
  auto* to_rows = reinterpret_cast<Vector*>(dst);
  const auto* from_rows = reinterpret_cast<const Vector*>(src);
  const int sub = threadIdx.x & ((1 << log_group) - 1);
  const std::int64_t rows_per_block = kRowThreads >> log_group;
  const std::int64_t rows = outer * size;
  for (std::int64_t row = blockIdx.x * rows_per_block + (threadIdx.x >> log_group); row < rows;
       row += static_cast<std::int64_t>(gridDim.x) * rows_per_block) {
    std::int64_t r;
    const std::int64_t o = divmod(row, size, r);
    const std::int64_t first = r == skip ? 0 : start[r], last = r == skip ? 0 : start[r + 1];
    const Vector* from = from_rows + o * n * vectors;
    for (std::int64_t v = sub; v < vectors; v += (1 << log_group)) {
      C acc[V];
      if (accumulate) {
        const Vector d = to_rows[row * vectors + v];
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = load(d.v[i]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = C(0);
      }
      std::int64_t b = first;
      for (; b + 4 <= last; b += 4) {  // four loads in flight, added in order
        Vector x[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) x[u] = from[order[b + u] * vectors + v];
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] += load(x[u].v[i]);
      }
      for (; b < last; ++b) {
        const Vector x = from[order[b] * vectors + v];
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += load(x.v[i]);
      }
      Vector out;
#pragma unroll
      for (int i = 0; i < V; ++i) out.v[i] = store<T>(acc[i]);
      to_rows[row * vectors + v] = out;
    }
  }
}

inline void launch_index_add_rows(const IndexAddRowsArgs& a) {
  const std::int64_t outer = a.outer, size = a.size, inner = a.inner, n = a.n;
  const std::int64_t skip = a.skip;
  const bool accumulate = a.accumulate;
  if (outer * size * inner == 0) return;
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;

  // Sources grouped by destination row, each group in ascending position.
  Tensor<std::int64_t> keys({n}, Device::cuda(device)), order({n}, Device::cuda(device));
  if (n > 0) {
    index_pairs<<<blocks_for(n, 256), 256, 0, stream>>>(a.index, n, keys.data(), order.data());
    KILN_CUDA_CHECK_LAUNCH();
    radix_sort_pairs(keys, order, n, bits_for(static_cast<std::uint64_t>(size - 1)), device, stream);
  }
  Tensor<std::int64_t> start({size + 1}, Device::cuda(device));
  bucket_starts<<<blocks_for(size + 1, 256), 256, 0, stream>>>(keys.data(), n, size, start.data());
  KILN_CUDA_CHECK_LAUNCH();

  with_floating_type("index_add_rows", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kV = 16 / static_cast<int>(sizeof(T));
    const bool vectorized = inner % kV == 0 && aligned16(a.dst) && aligned16(a.src);
    auto launch = [&](auto v_tag) {
      constexpr int V = decltype(v_tag)::value;
      const std::int64_t vectors = inner / V;
      const int log_group = log_group_for(vectors);
      add_rows<T, V><<<blocks_for(outer * size, kRowThreads >> log_group), kRowThreads, 0, stream>>>(
          static_cast<T*>(a.dst), static_cast<const T*>(a.src), order.data(), start.data(), outer, size, n, vectors,
          log_group, skip, accumulate);
    };
    if (vectorized) launch(std::integral_constant<int, kV>{});
    else launch(std::integral_constant<int, 1>{});
  });
  KILN_CUDA_CHECK_LAUNCH();
}

inline const bool index_rows_registered =
    register_device_kernel(&launch_index_select_rows) && register_device_kernel(&launch_index_add_rows);

}  // namespace kiln::kernels::gather
