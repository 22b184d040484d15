// Arguments of the KV-cache kernels of the generation engine (kernels/decode_attention/; front-end
// ops/decode_attention.hpp, CPU reference backend/cpu/decode_attention.hpp).
//
// A cache is a preallocated [slots, capacity, row...] buffer: one slot per sequence, `capacity`
// positions each. Sequences of a batch name their slot; the past is never moved or copied.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// cache[slots[a], positions[a] + s, :] = values[a, s, :] for a < count, s < steps; row = the
// elements of one position (contiguous), cache contiguous [slots, capacity, row].
struct CacheWriteArgs {
  static constexpr const char* kernel = "cache_write";
  static constexpr const char* header = "kiln/kernels/decode_attention/cache_write.cuh";
  DeviceLaunch launch;
  int element_bytes = 2;           // the element type is only moved, never interpreted
  void* cache = nullptr;
  const void* values = nullptr;    // [count, steps, row], contiguous
  const std::int64_t* slots = nullptr;      // [count]
  const std::int64_t* positions = nullptr;  // [count]: the position of values[a, 0]
  std::int64_t count = 0, steps = 0, row = 0;
  std::int64_t num_slots = 0, capacity = 0;  // rows outside the cache are skipped, never written
};

// One query token per sequence against its cached keys, grouped-query style:
//   out[a, h, :] = sum_{j < lengths[a]} p_j v[slots[a], j, h / G, :],
//   p = softmax_j(scale * q[a, h, :] . k[slots[a], j, h / G, :]),   G = heads / kv_heads.
// MLA's absorbed decode is the case kv_heads = 1 with k = [latent, rope key] and v = the latent
// (a view of the same cache: v_row_stride = k_row_stride, dv < dk).
struct DecodeAttentionArgs {
  static constexpr const char* kernel = "decode_attention";
  static constexpr const char* header = "kiln/kernels/decode_attention/decode_attention.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;       // of q, the caches and out: f32, f64, bf16, f16
  void* out = nullptr;             // [count, heads, dv], contiguous
  const void* q = nullptr;         // [count, heads, dk], contiguous
  const void* k = nullptr;         // element (slot, j, kv_head, d) at slot*k_slot_stride + j*k_row_stride + kv_head*k_head_stride + d
  const void* v = nullptr;         // likewise with the v strides
  std::int64_t k_slot_stride = 0, k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_slot_stride = 0, v_row_stride = 0, v_head_stride = 0;
  const std::int64_t* slots = nullptr;    // [count]
  const std::int64_t* lengths = nullptr;  // [count]: keys 0 .. lengths[a] - 1 are attended
  std::int64_t count = 0;
  int heads = 1, kv_heads = 1, dk = 0, dv = 0;
  std::int64_t num_slots = 0, capacity = 0;  // slots outside [0, num_slots) give zeros; lengths clamp to capacity
  double scale = 1.0;
};

}  // namespace kiln::kernels
