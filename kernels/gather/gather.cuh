// gather and scatter_add along one dim (arguments kernels/gather/args.hpp: GatherArgs,
// ScatterAddArgs; front-end ops/gather.hpp; CPU reference backend/cpu/gather.hpp); scatter_add also
// serves gather's and topk's backward.
//
//   gather:      out[p] = src[p with p[dim] replaced by index[p]], p over index's shape. out and
//                index contiguous, src any strides. Any dtype (a raw copy of each element).
//   scatter_add: dst[p with p[dim] replaced by index[p]] += src[p], p over index's shape. dst and
//                index contiguous, src any strides. Floating dtypes.
//
// gather: one thread per output element; its coordinates come from the row-major position
// (divmods with a 32-bit fast path), src's offset from its strides. Traffic: 8 B of index + one
// element read, one element written; the src reads are as scattered as the indices.
//
// scatter_add must be deterministic, and match the CPU bit for bit: every destination element adds
// its contributions in ascending position along the line (the CPU gives each line along `dim` to
// one thread), rounding to the element type after each addition as the CPU does. Two positions can
// only hit the same element when they differ in `dim` alone, i.e. lie on the same line. Two paths:
//   - lines: one thread per line walks it in order, exactly the CPU loop. Chosen when lines are
//     short (topk's backward: k per line) or so many that they fill the GPU on their own.
//   - sorted: for few long lines (say a scatter along dim 0 of a [16384, 7168] tensor: 7168 lines
//     of 16384 adds each, far too serial for 7168 threads), the problem is flattened: each position
//     becomes a (destination offset, source offset) pair, the pairs are radix-sorted by destination
//     (stable: ascending position within a destination, kernels/common/radix_sort.cuh), and the first pair of each
//     run of equal destinations sums its run. That is the index_add pattern on the flattened
//     problem; parallel over destinations however the lines are shaped.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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

// geo: index's shape; strides {src (0 on dim)}.
template <class W>
__global__ void gather_elements(W* __restrict__ out, const W* __restrict__ src, const std::int64_t* __restrict__ index,
                                const __grid_constant__ Offsets<1> geo, std::int64_t n, std::int64_t along,
                                std::int64_t size, unsigned long long* flag) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t id = index[i];
    if (id < 0 || id >= size) {
      flag_bad_index(flag, i);
      continue;
    }
    std::int64_t off[1];
    geo.at(i, off);
    out[i] = src[off[0] + id * along];
  }
}

inline void launch_gather(const GatherArgs& a) {
  const TensorView& src = a.src;
  const TensorView& index = a.index;
  const int dim = a.dim;
  const std::int64_t n = index.numel();
  if (n == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  TensorView src_off_dim = src;
  src_off_dim.strides[dim] = 0;  // dim's coordinate comes from the index
  const Offsets<1> geo = offsets_without(index, -1, {&src_off_dim});
  with_word(dtype_size(src.dtype), [&](auto tag) {
    using W = decltype(tag);
    gather_elements<W><<<blocks_for(n, 256), 256, 0, a.launch.stream>>>(
        static_cast<W*>(a.out), static_cast<const W*>(src.data), index.as<const std::int64_t>(), geo, n,
        src.strides[dim], src.shape[dim], flag_word(a.first_bad));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

// acc + x rounded to T, as the CPU's `target = convert<T>(C(target) + C(x))`.
template <class T>
__device__ __forceinline__ compute_t<T> add_rounded(compute_t<T> acc, compute_t<T> x) {
  return load(store<T>(acc + x));
}

// One thread per line. geo: the line grid (index's shape without dim); strides {dst, src, index}.
template <class T>
__global__ void scatter_lines(T* __restrict__ dst, const T* __restrict__ src, const std::int64_t* __restrict__ index,
                              const __grid_constant__ Offsets<3> geo, std::int64_t lines, std::int64_t length,
                              std::int64_t dst_along, std::int64_t src_along, std::int64_t index_along,
                              std::int64_t size, unsigned long long* flag) {
  for (std::int64_t line = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; line < lines;
       line += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t off[3];
    geo.at(line, off);
    for (std::int64_t j = 0; j < length; ++j) {
      const std::int64_t at = off[2] + j * index_along;  // index is contiguous: also its row-major position
      const std::int64_t id = index[at];
      if (id < 0 || id >= size) {
        flag_bad_index(flag, at);
        continue;
      }
      T& target = dst[off[0] + id * dst_along];
      target = store<T>(load(target) + load(src[off[1] + j * src_along]));
    }
  }
}

// The sorted path, step 1: the (destination offset, source offset) pair of every position of
// index. geo: index's shape; strides {dst (0 on dim), src}. Bad indices get source -1 (skipped).
static __global__ void scatter_pairs(const std::int64_t* __restrict__ index, const __grid_constant__ Offsets<2> geo,
                              std::int64_t n, std::int64_t dst_along, std::int64_t size,
                              std::int64_t* __restrict__ keys, std::int64_t* __restrict__ sources,
                              unsigned long long* flag) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t id = index[i];
    std::int64_t off[2];
    geo.at(i, off);
    if (id < 0 || id >= size) {
      flag_bad_index(flag, i);
      keys[i] = 0;
      sources[i] = -1;
      continue;
    }
    keys[i] = off[0] + id * dst_along;
    sources[i] = off[1];
  }
}

// Step 2: the first pair of each run of equal destinations adds the run, in order.
template <class T>
__global__ void scatter_runs(T* __restrict__ dst, const T* __restrict__ src, const std::int64_t* __restrict__ keys,
                             const std::int64_t* __restrict__ sources, std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t key = keys[i];
    if (i > 0 && keys[i - 1] == key) continue;
    compute_t<T> acc{};
    bool any = false;  // pairs of bad indices (source -1) never touch dst
    for (std::int64_t b = i; b < n && keys[b] == key; ++b) {
      if (sources[b] < 0) continue;
      if (!any) acc = load(dst[key]);
      any = true;
      acc = add_rounded<T>(acc, load(src[sources[b]]));
    }
    if (any) dst[key] = store<T>(acc);
  }
}

inline void launch_scatter_add(const ScatterAddArgs& a) {
  const TensorView& dst = a.dst;
  const TensorView& src = a.src;
  const TensorView& index = a.index;
  unsigned long long* flag = flag_word(a.first_bad);
  const int dim = a.dim;
  const std::int64_t n = index.numel();
  if (n == 0) return;
  const std::int64_t length = index.shape[dim], lines = n / length, size = dst.shape[dim];
  const int device = a.launch.device;
  cuda::DeviceGuard guard(device);
  const cudaStream_t stream = a.launch.stream;
  with_floating_type("scatter_add", dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (length <= 64 || lines >= 131072) {
      const Offsets<3> geo = offsets_without(index, dim, {&dst, &src, &index});
      scatter_lines<T><<<blocks_for(lines, 128), 128, 0, stream>>>(
          dst.as<T>(), src.as<const T>(), index.as<const std::int64_t>(), geo, lines, length, dst.strides[dim],
          src.strides[dim], index.strides[dim], size, flag);
      KILN_CUDA_CHECK_LAUNCH();
      return;
    }
    TensorView dst_off_dim = dst;
    dst_off_dim.strides[dim] = 0;
    const Offsets<2> geo = offsets_without(index, -1, {&dst_off_dim, &src});
    Tensor<std::int64_t> keys({n}, Device::cuda(device)), sources({n}, Device::cuda(device));
    scatter_pairs<<<blocks_for(n, 256), 256, 0, stream>>>(index.as<const std::int64_t>(), geo, n, dst.strides[dim],
                                                          size, keys.data(), sources.data(), flag);
    KILN_CUDA_CHECK_LAUNCH();
    std::uint64_t max_key = 0;  // the largest destination offset
    for (int d = 0; d < dst.ndim; ++d)
      if (dst.shape[d] > 0) max_key += static_cast<std::uint64_t>((dst.shape[d] - 1) * dst.strides[d]);
    radix_sort_pairs(keys, sources, n, bits_for(max_key), device, stream);
    scatter_runs<T><<<blocks_for(n, 256), 256, 0, stream>>>(dst.as<T>(), src.as<const T>(), keys.data(),
                                                            sources.data(), n);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool gather_registered =
    register_device_kernel(&launch_gather) && register_device_kernel(&launch_scatter_add);

}  // namespace kiln::kernels::gather
