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
// The sums follow math/index_add.hpp's order, the CPU's too, so a float gradient is bit-identical
// to the CPU one: in compute precision (float for bf16/fp16, double for double), in chunks of 32
// sources. A row with at most 32 sources is summed by one group of threads, each thread its own
// 16-byte column slice (add_rows). A longer row (a frequent token: thousands of positions) would
// be a serial chain of loads for that one group; its chunks are summed apart, one group per chunk
// over all long rows at once (chunk_sums, into a compute-precision buffer of at most 2n/32 rows),
// and add_rows then adds the row's partial sums in order. Every destination row is written (zeros
// when no index names it), so the backward needs no separate zero fill: traffic is the destination
// written once plus each source row read once, and for the long rows each chunk's partial sum
// written and read once (bf16: 4 bytes an element per chunk of up to 32 two-byte sources).
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
#include "kiln/kernels/common/scan.cuh"
#include "kiln/kernels/gather/args.hpp"
#include "kiln/kernels/gather/common.cuh"
#include "kiln/math/index_add.hpp"

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

// chunks[r] = the chunks of destination row r summed apart (math::index_add_chunks of its source
// count; none for the skipped row), chunks[size] = 0: exclusive_scan turns this into each long
// row's first chunk and, at [size], the number of chunks.
static __global__ void chunk_counts(const std::int64_t* __restrict__ start, std::int64_t size, std::int64_t skip,
                                    std::int64_t* __restrict__ chunks) {
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r <= size;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    chunks[r] = r == size || r == skip ? 0 : math::index_add_chunks(start[r + 1] - start[r]);
}

// The sum of V compute-precision values of 16-byte vector v of the rows order[first .. last) of
// `from`, from 0 in ascending order, four loads in flight.
template <class T, int V, class C = compute_t<T>>
__device__ __forceinline__ void sum_sources(C (&acc)[V], const Vec<T, V>* __restrict__ from,
                                            const std::int64_t* __restrict__ order, std::int64_t first,
                                            std::int64_t last, std::int64_t vectors, std::int64_t v) {
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = C(0);
  std::int64_t b = first;
  for (; b + 4 <= last; b += 4) {
    Vec<T, V> x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) x[u] = from[order[b + u] * vectors + v];
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += load(x[u].v[i]);
  }
  for (; b < last; ++b) {
    const Vec<T, V> x = from[order[b] * vectors + v];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] += load(x.v[i]);
  }
}

// partial[o][c] = P_c of math/index_add.hpp for every chunk c < chunk_start[size] of the long
// rows: one group of threads per (o, chunk), grid over an upper bound of the chunk count (the
// exact count is on the device only; groups past it return).
template <class T, int V>
__global__ void __launch_bounds__(kRowThreads, 4) chunk_sums(compute_t<T>* __restrict__ partial,
                                                          const T* __restrict__ src,
                                                          const std::int64_t* __restrict__ order,
                                                          const std::int64_t* __restrict__ start,
                                                          const std::int64_t* __restrict__ chunk_start,
                                                          std::int64_t size, std::int64_t n, std::int64_t bound,
                                                          std::int64_t outer, std::int64_t vectors, int log_group) {
  using C = compute_t<T>;
  const auto* from_rows = reinterpret_cast<const Vec<T, V>*>(src);
  const int sub = threadIdx.x & ((1 << log_group) - 1);
  const std::int64_t groups_per_block = kRowThreads >> log_group;
  const std::int64_t chunks = chunk_start[size];
  for (std::int64_t g = blockIdx.x * groups_per_block + (threadIdx.x >> log_group); g < outer * bound;
       g += static_cast<std::int64_t>(gridDim.x) * groups_per_block) {
    std::int64_t c;
    const std::int64_t o = divmod(g, bound, c);
    if (c >= chunks) continue;
    // The long row holding chunk c: the last r with chunk_start[r] <= c (rows without chunks
    // share their successor's start, so the last such r is the one whose range holds c).
    std::int64_t lo = 0, hi = size;  // answer in [lo, hi)
    while (hi - lo > 1) {
      const std::int64_t mid = (lo + hi) >> 1;
      if (chunk_start[mid] <= c) lo = mid;
      else hi = mid;
    }
    const std::int64_t first = start[lo] + (c - chunk_start[lo]) * math::kIndexAddChunk;
    const std::int64_t end = start[lo + 1];
    const std::int64_t last = first + math::kIndexAddChunk < end ? first + math::kIndexAddChunk : end;
    for (std::int64_t v = sub; v < vectors; v += (1 << log_group)) {
      C acc[V];
      sum_sources<T, V>(acc, from_rows + o * n * vectors, order, first, last, vectors, v);
      C* to = partial + ((o * bound + c) * vectors + v) * V;
#pragma unroll
      for (int i = 0; i < V; ++i) to[i] = acc[i];
    }
  }
}

// Every destination row: d (0, or its value when accumulating) plus its sources' sum, P_0 summed
// here for a row of at most one chunk, the partial sums of chunk_sums in order for a long row
// (chunk_start null: no row is long).
template <class T, int V>
__global__ void __launch_bounds__(kRowThreads, 4) add_rows(T* __restrict__ dst, const T* __restrict__ src,
                                                         const std::int64_t* __restrict__ order,
                                                         const std::int64_t* __restrict__ start,
                                                         const std::int64_t* __restrict__ chunk_start,
                                                         const compute_t<T>* __restrict__ partial,
                                                         std::int64_t bound, std::int64_t outer, std::int64_t size,
                                                         std::int64_t n, std::int64_t vectors, int log_group,
                                                         std::int64_t skip, bool accumulate) {
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
    const std::int64_t chunk0 = chunk_start != nullptr ? chunk_start[r] : 0;
    const std::int64_t chunks = chunk_start != nullptr ? chunk_start[r + 1] - chunk0 : 0;
    const C* row_partials = partial + (o * bound + chunk0) * vectors * V;  // chunk c: + c * vectors * V
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
      if (chunks > 0) {  // a long row: its chunks' sums, in order
        for (std::int64_t c = 0; c < chunks; ++c) {
          const C* p = row_partials + (c * vectors + v) * V;
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] += p[i];
        }
      } else if (last > first) {
        C sum[V];
        sum_sources<T, V>(sum, from_rows + o * n * vectors, order, first, last, vectors, v);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += sum[i];
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
  // Long rows exist only when n > one chunk. Their chunk count is at most 2n/K: a long row of c
  // sources has ceil(c/K) < c/K + 1 < 2c/K chunks.
  const bool chunked = n > math::kIndexAddChunk;
  const std::int64_t bound = chunked ? 2 * n / math::kIndexAddChunk : 0;
  Tensor<std::int64_t> chunk_start({chunked ? size + 1 : 1}, Device::cuda(device));
  if (chunked) {
    chunk_counts<<<blocks_for(size + 1, 256), 256, 0, stream>>>(start.data(), size, skip, chunk_start.data());
    KILN_CUDA_CHECK_LAUNCH();
    exclusive_scan(chunk_start.data(), size + 1, device, stream);
  }

  with_floating_type("index_add_rows", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    constexpr int kV = 16 / static_cast<int>(sizeof(T));
    const bool vectorized = inner % kV == 0 && aligned16(a.dst) && aligned16(a.src);
    Tensor<C> partial({chunked ? outer * bound * inner : 1}, Device::cuda(device));
    auto launch = [&](auto v_tag) {
      constexpr int V = decltype(v_tag)::value;
      const std::int64_t vectors = inner / V;
      const int log_group = log_group_for(vectors);
      if (chunked) {
        chunk_sums<T, V><<<blocks_for(outer * bound, kRowThreads >> log_group), kRowThreads, 0, stream>>>(
            partial.data(), static_cast<const T*>(a.src), order.data(), start.data(), chunk_start.data(), size, n,
            bound, outer, vectors, log_group);
        KILN_CUDA_CHECK_LAUNCH();
      }
      add_rows<T, V><<<blocks_for(outer * size, kRowThreads >> log_group), kRowThreads, 0, stream>>>(
          static_cast<T*>(a.dst), static_cast<const T*>(a.src), order.data(), start.data(),
          chunked ? chunk_start.data() : nullptr, partial.data(), bound, outer, size, n, vectors, log_group, skip,
          accumulate);
    };
    if (vectorized) launch(std::integral_constant<int, kV>{});
    else launch(std::integral_constant<int, 1>{});
  });
  KILN_CUDA_CHECK_LAUNCH();
}

inline const bool index_rows_registered =
    register_device_kernel(&launch_index_select_rows) && register_device_kernel(&launch_index_add_rows);

}  // namespace kiln::kernels::gather
