// TMA and bulk copies on Hopper (sm_90): the tensor memory accelerator copies a 2-D to 4-D box of a
// global tensor (described by a CUtensorMap built on the host) into shared memory, zero-filling
// out-of-range elements and applying the swizzle that wgmma expects, with one instruction from one
// thread; plain bulk copies move contiguous runs. Loads complete on an mbarrier (mbarrier.cuh),
// stores are tracked by bulk groups. Each device wrapper is a single PTX instruction (PTX ISA 8.x,
// "cp.async.bulk.tensor", "cp.async.bulk", "prefetch.tensormap").
//
// Host side: encode_tiled(), the driver's cuTensorMapEncodeTiled, fetched through the runtime
// (cudaGetDriverEntryPointByVersion) so that kiln needs no link against libcuda. Shared memory is
// named by its shared-window address (smem.cuh: shared_address).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>

#include "kiln/core/error.hpp"
#include "kiln/kernels/common/cuda_check.hpp"

namespace kiln::kernels::sm90 {

// ---- device: copies into shared memory -------------------------------------------------------------

// Copies the box at (x = innermost coordinate, y = row) of the tensor map into shared memory at
// dst; the bytes complete on bar. tensor_map is the address of a __grid_constant__ parameter.
__device__ inline void tma_load_2d(std::uint32_t dst, const void* tensor_map, int x, int y, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

// tma_load_2d into every CTA of the cluster named in cta_mask (bit r: rank r, cluster.cuh): the box
// is read from L2 once and written at shared address dst of each, its bytes completing on the
// barrier at address bar of each (the same offsets in every CTA).
__device__ inline void tma_load_2d_multicast(std::uint32_t dst, const void* tensor_map, int x, int y, std::uint32_t bar,
                                             std::uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(bar), "h"(cta_mask)
      : "memory");
}

// The same for a 3-D tensor map, at (x = innermost coordinate, y, z): a box never crosses z, so a
// tensor stacked as [z][y][x] (the G weight matrices of a grouped GEMM) clips and zero-fills each
// slice at its own y edge.
__device__ inline void tma_load_3d(std::uint32_t dst, const void* tensor_map, int x, int y, int z, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
      :
      : "r"(dst), "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(z), "r"(bar)
      : "memory");
}

// tma_load_3d into every CTA of the cluster named in cta_mask (as tma_load_2d_multicast).
__device__ inline void tma_load_3d_multicast(std::uint32_t dst, const void* tensor_map, int x, int y, int z,
                                             std::uint32_t bar, std::uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3, %4}], [%5], %6;" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(z), "r"(bar), "h"(cta_mask)
      : "memory");
}

// The same for a 4-D tensor map, at (x = innermost coordinate, y, z, w): e.g. one head's rows of a
// [B][H][S][d] operand with any batch, head and row strides (the attention kernels' views), a box
// never crossing a head or a batch entry.
__device__ inline void tma_load_4d(std::uint32_t dst, const void* tensor_map, int x, int y, int z, int w,
                                   std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];"
      :
      : "r"(dst), "l"(reinterpret_cast<std::uint64_t>(tensor_map)), "r"(x), "r"(y), "r"(z), "r"(w), "r"(bar)
      : "memory");
}

// A plain contiguous copy of `bytes` (a multiple of 16, 16-byte aligned ends) into shared memory.
__device__ inline void bulk_load(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(reinterpret_cast<std::uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// ---- device: stores from shared memory -------------------------------------------------------------

// Copies a box from shared memory (dense, in the tensor map's swizzle) to the 3-D tensor at
// (x, y, z); elements outside the tensor are not written. Completion is tracked by bulk groups.
// The shared-memory source must be made visible to the async proxy first (smem.cuh:
// fence_proxy_async_shared).
__device__ inline void tma_store_3d(const void* tensor_map, std::uint32_t src, int x, int y, int z) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];" ::"l"(
                   reinterpret_cast<std::uint64_t>(tensor_map)),
               "r"(src), "r"(x), "r"(y), "r"(z)
               : "memory");
}
__device__ inline void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until at most Pending bulk groups of this thread still read their shared-memory source.
template <int Pending>
__device__ inline void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(Pending) : "memory");
}
// Waits until at most Pending bulk groups of this thread are incomplete (writes done).
template <int Pending>
__device__ inline void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(Pending) : "memory");
}

// Brings a tensor map (the address of a __grid_constant__ parameter) into the descriptor cache.
__device__ inline void prefetch_tensor_map(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<std::uint64_t>(tensor_map)) : "memory");
}

// ---- host: tensor maps -----------------------------------------------------------------------------

// cuTensorMapEncodeTiled is a driver API function; it is fetched through the runtime so that kiln
// needs no link against libcuda. Looked up once per process (the entry point is the same for every
// device).
inline PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    KILN_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status));
    check(status == cudaDriverEntryPointSuccess && ptr != nullptr, "TMA",
          "the CUDA driver has no cuTensorMapEncodeTiled (a Hopper driver is required)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A bf16 tensor of `rank` (2 to 4) dimensions, innermost first (dims[0] elements a row), whose
// outer dimensions lie strides[i - 1] bytes apart (multiples of 16), read as boxes of 64 elements
// (128 bytes) x box_rows rows (x 1 x 1) with the 128-byte swizzle that wgmma's descriptors expect
// (wgmma.cuh); elements outside the tensor read as zero. `op` names the caller in the error.
inline CUtensorMap tensor_map_bf16_sw128(const void* data, int rank, const std::int64_t* dims,
                                         const std::int64_t* strides, int box_rows, const char* op) {
  check(rank >= 2 && rank <= 4, op, "a tensor map of rank 2 to 4, got ", rank);
  CUtensorMap map{};
  cuuint64_t d[4] = {}, st[3] = {};
  for (int i = 0; i < rank; ++i) d[i] = static_cast<cuuint64_t>(dims[i]);
  for (int i = 0; i + 1 < rank; ++i) st[i] = static_cast<cuuint64_t>(strides[i]);
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(rank),
                                    const_cast<void*>(data), d, st, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  check(r == CUDA_SUCCESS, op, "cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a rank-", rank,
        " bf16 operand of ", dims[0], " x ", dims[1], rank > 2 ? " x " : "", rank > 2 ? dims[2] : 0,
        rank > 3 ? " x " : "", rank > 3 ? dims[3] : 0, " elements (rows ", strides[0], " bytes apart)");
  return map;
}

}  // namespace kiln::kernels::sm90
