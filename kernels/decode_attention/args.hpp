// Arguments of the KV-cache kernels of the generation engine (kernels/decode_attention/; front-ends
// ops/decode_attention.hpp and ops/paged_attention.hpp, CPU reference backend/cpu/decode_attention.hpp).
//
// Two cache layouts, one set of kernels; only the addressing of a sequence's token j differs:
//   contiguous (block_table null): a preallocated [slots, capacity, row...] buffer, one slot per
//     sequence: token j of the sequence in slot s is row j of slot s;
//   paged (block_table set): a pool [num_blocks, block_tokens, row...] of fixed-size blocks and a
//     table [sequences, max_blocks] per layer: token j of sequence s is row j % block_tokens of
//     block block_table[s * max_blocks + j / block_tokens].
// In both the past is never moved or copied. The index tensors (slots, positions, lengths, the
// table) stay on the device, so the front-ends cannot check their values without a host
// synchronisation; the kernels never read or write outside the cache instead:
//   cache_write skips the rows whose slot is outside [0, num_slots), whose position is outside
//     [0, capacity) (paged: capacity = max_blocks * block_tokens), or whose table entry is outside
//     [0, num_blocks);
//   decode_attention gives zeros for a batch row whose slot is outside [0, num_slots), or (paged)
//     any of whose table entries for tokens 0 .. lengths[a] - 1 is outside [0, num_blocks);
//     lengths clamp to [0, capacity]; a query with no key to attend (lengths[a] < queries) gives
//     zeros.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

// cache[token positions[a] + s of the sequence in slots[a]] = values[a, s, :] for a < count,
// s < steps; row = the elements of one token (contiguous). Contiguous cache [num_slots, capacity,
// row]; paged blocks [num_blocks, block_tokens, row] with block_table [num_slots, max_blocks].
struct CacheWriteArgs {
  static constexpr const char* kernel = "cache_write";
  static constexpr const char* header = "kiln/kernels/decode_attention/cache_write.cuh";
  DeviceLaunch launch;
  int element_bytes = 2;           // the element type is only moved, never interpreted
  void* cache = nullptr;           // the contiguous cache, or the paged blocks
  const void* values = nullptr;    // [count, steps, row], contiguous
  const std::int64_t* slots = nullptr;      // [count]
  const std::int64_t* positions = nullptr;  // [count]: the position of values[a, 0]
  std::int64_t count = 0, steps = 0, row = 0;
  std::int64_t num_slots = 0, capacity = 0;  // rows outside the cache are skipped, never written
  // Paged only (block_table null: contiguous). capacity is then max_blocks * block_tokens.
  const std::int64_t* block_table = nullptr;  // [num_slots, max_blocks]
  std::int64_t max_blocks = 0, block_tokens = 0, num_blocks = 0;
};

// MLA's decode step writing its new latent rows: for every batch row a and step s, the row x of
// kv_a's output [c | k_pe] (r + dr values, before the norm and rope) becomes the cache row
//   [ rms_norm(c) * weight | rope(k_pe) ]   (rope's interleaved pairs (2i, 2i + 1))
// at (slots[a], positions[a] + s), in one pass (kernels/decode_attention/latent_write.cuh) where
// the composed step takes three launches (RMSNorm, rope, cache_write) and a temporary row. The
// same roundings as those ops: the values equal theirs bit for bit. Addressing, and rows outside
// the cache skipped, as CacheWriteArgs.
struct LatentWriteArgs {
  static constexpr const char* kernel = "latent_cache_write";
  static constexpr const char* header = "kiln/kernels/decode_attention/latent_write.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;       // of x, weight and the cache (bf16, f16, f32, f64)
  void* cache = nullptr;           // rows of r + dr values: the contiguous cache, or the paged blocks
  const void* x = nullptr;         // [count, steps] rows of r + dr values, x_row_stride elements apart
  std::int64_t x_row_stride = 0;
  const void* weight = nullptr;    // [r], the norm's weight
  double eps = 1e-6;
  const void* cos = nullptr;       // [count, steps, dr / 2] in x's compute type (float, or double)
  const void* sin = nullptr;
  int r = 0, dr = 0;
  const std::int64_t* slots = nullptr;      // [count]
  const std::int64_t* positions = nullptr;  // [count]: the position of step 0
  std::int64_t count = 0, steps = 0;
  std::int64_t num_slots = 0, capacity = 0;
  const std::int64_t* block_table = nullptr;  // paged only (null: contiguous)
  std::int64_t max_blocks = 0, block_tokens = 0, num_blocks = 0;
};

// Whether latent_write.cuh takes these rows: r a whole number of 16-byte vectors, at most 128 of
// them (RMSNorm's one-warp-per-row variant, whose order of additions the kernel repeats), dr even,
// and 16-byte aligned rows (x, the cache rows, the weight).
inline bool latent_write_supported(std::int64_t element_bytes, std::int64_t r, std::int64_t dr,
                                   std::int64_t x_row_stride, std::uintptr_t x, std::uintptr_t cache,
                                   std::uintptr_t weight) {
  const std::int64_t vector = 16 / element_bytes;
  return r > 0 && r % vector == 0 && r / vector <= 128 && dr > 0 && dr % 2 == 0 &&
         (x_row_stride * element_bytes) % 16 == 0 && ((r + dr) * element_bytes) % 16 == 0 && x % 16 == 0 &&
         cache % 16 == 0 && weight % 16 == 0;
}

// Which kernel computes decode_attention (DecodeAttentionArgs::implementation):
//   simt: the CUDA-core kernel (decode_attention.cuh): every dtype, shape, layout, the FP8 latent
//     cache;
//   mma: the tensor-core kernel (decode_attention_mma.cuh, mma.sync m16n8k16 on sm_80+): MLA's
//     absorbed decode in bf16, one kv head, v the first dv columns of k, (dk, dv) = (288, 256)
//     (kiln's big config) or (576, 512) (DeepSeek-V3);
//   wgmma: the Hopper kernels (wgmma and TMA on sm_90): the same problems as mma, at (288, 256)
//     decode_attention_hopper.cuh's, at (576, 512) the seesaw kernel (decode_attention_seesaw.cuh),
//     paged blocks of a multiple of 64 tokens or the contiguous cache;
//   prefer_mma: the first of wgmma, mma that applies, simt elsewhere (a whole model's decode: the
//     engine's layers call the op with every cache they hold);
//   automatic: as prefer_mma (on an H100 the Hopper kernel took 0.56-0.64x the mma.sync kernel's
//     time at few heads and 0.30x at 128 heads x 2 tokens, docs/mla.md), or simt when the
//     environment sets KILN_DECODE_KERNEL=simt, or mma and simt only with KILN_DECODE_KERNEL=mma
//     (comparisons).
// Asking for mma or wgmma where it does not apply is an error. Launches are recorded as
// "decode_attention/simt", "decode_attention/simt_fp8", "decode_attention/mma" or
// "decode_attention/wgmma" (core/kernel_trace.hpp).
enum class DecodeKernel { automatic, simt, mma, prefer_mma, wgmma };

// `queries` query tokens per sequence against its cached keys, grouped-query style:
//   out[a, t, h, :] = sum_{j < L_t} p_j v[j, h / G, :],
//   p = softmax_{j < L_t}(scale * q[a, t, h, :] . k[j, h / G, :]),   G = heads / kv_heads,
// with k, v the rows of the sequence in slot slots[a] and L_t = lengths[a] - (queries - 1 - t):
// query t sits at position lengths[a] - queries + t and attends the tokens up to itself (queries 2:
// the main model's token and the MTP draft of speculative decoding).
// MLA's absorbed decode is the case kv_heads = 1 with k = [latent, rope key] and v = the latent
// (a view of the same cache: the v strides equal the k strides, dv < dk).
//
// Split along the sequence: with splits > 1 each row's keys are cut into `splits` ranges, each
// computed by its own block, which writes its partial softmax state (max m, sum l, the
// accumulator acc = sum_j exp(s_j - m) v_j) to `workspace`; a second kernel combines the splits in
// a fixed order (deterministic). The front-end asks DecodeAttentionPlanArgs how many splits to use
// and allocates the workspace (decode_attention_workspace_elements values of the compute type:
// float, or double for double inputs).
struct DecodeAttentionArgs {
  static constexpr const char* kernel = "decode_attention";
  static constexpr const char* header = "kiln/kernels/decode_attention/decode_attention.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;       // of q, the caches and out: f32, f64, bf16, f16
  void* out = nullptr;             // [count, queries, heads, dv], contiguous
  const void* q = nullptr;         // [count, queries, heads, dk], contiguous
  // Element (token j, kv_head, d) of the sequence in slot s: contiguous, at s * k_slot_stride +
  // j * k_row_stride + kv_head * k_head_stride + d; paged, at block * k_slot_stride +
  // (j % block_tokens) * k_row_stride + kv_head * k_head_stride + d (k_slot_stride is then the
  // stride between blocks). Likewise v with the v strides.
  const void* k = nullptr;
  const void* v = nullptr;
  std::int64_t k_slot_stride = 0, k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_slot_stride = 0, v_row_stride = 0, v_head_stride = 0;
  const std::int64_t* slots = nullptr;    // [count]
  const std::int64_t* lengths = nullptr;  // [count]: tokens 0 .. lengths[a] - 1 are cached
  std::int64_t count = 0;
  int queries = 1;                 // 1 or 2
  int heads = 1, kv_heads = 1, dk = 0, dv = 0;
  // Contiguous: num_slots slots of `capacity` tokens. Paged: num_slots = the table's sequences,
  // capacity = max_blocks * block_tokens. Slots outside [0, num_slots) give zeros; lengths clamp
  // to capacity.
  std::int64_t num_slots = 0, capacity = 0;
  const std::int64_t* block_table = nullptr;  // paged: [num_slots, max_blocks]; null: contiguous
  std::int64_t max_blocks = 0, block_tokens = 0, num_blocks = 0;
  double scale = 1.0;
  int splits = 1;                  // blocks per row along the sequence (<= kDecodeMaxSplits)
  void* workspace = nullptr;       // splits > 1: decode_attention_workspace_elements(*this) values
  // FP8 latent cache (ops/latent_fp8_cache.hpp; MLA's absorbed decode, kv_heads = 1, dtype bf16),
  // when `latent` is set: k and v are unused, and token j of a sequence is the token index
  // tok = block * k_slot_stride + row (the front-end sets k_slot_stride = v_slot_stride = rows per
  // block or slot, k_row_stride = v_row_stride = 1), whose key is [latent ⊙ scale, rope] (dk = dv +
  // dr) and whose value is latent ⊙ scale (dv = r):
  const void* latent = nullptr;           // e4m3 [tokens, dv]
  const float* latent_scales = nullptr;   // [tokens, ceil(dv / 128)]: columns 128 i .. 128 i + 127
  const void* rope = nullptr;             // dtype [tokens, dk - dv]
  DecodeKernel implementation = DecodeKernel::automatic;
};

constexpr int kDecodeMaxSplits = 128;

// Values of the compute type the split path needs: per (batch row, query, head) and split, m and
// l, then the dv accumulator columns (all m, l pairs first, then all accumulators). 0 for one split.
constexpr std::int64_t decode_attention_workspace_elements(const DecodeAttentionArgs& a) {
  return a.splits > 1 ? a.count * a.queries * a.heads * a.splits * (2 + static_cast<std::int64_t>(a.dv)) : 0;
}

// The split count decode_attention would use for `problem` on its device: problem->splits if it
// is >= 1 (a caller's choice, e.g. a test forcing the split path; clamped to kDecodeMaxSplits),
// else (0: automatic) enough splits to give every multiprocessor a block when the rows, kv heads
// and head chunks alone would leave more than half of them idle, each split keeping at least 256
// keys of the capacity. Written to *splits (a host int). A query, not a kernel: nothing runs on
// the device.
struct DecodeAttentionPlanArgs {
  static constexpr const char* kernel = "decode_attention_plan";
  static constexpr const char* header = "kiln/kernels/decode_attention/decode_attention.cuh";
  DeviceLaunch launch;
  const DecodeAttentionArgs* problem = nullptr;
  int* splits = nullptr;
};

}  // namespace kiln::kernels
