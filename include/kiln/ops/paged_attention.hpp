// The KV-cache operations over a PAGED cache: the cache of every sequence is a list of fixed-size
// blocks from one pool (infer/block_allocator.hpp hands them out), so sequences grow a block at a
// time, return their blocks when they finish, and the samples of a GRPO group share their prompt's
// blocks instead of holding copies. The contiguous layout (one slot of `capacity` rows per
// sequence) is ops/decode_attention.hpp; the functions are the same, only the addressing differs.
//
// Layout. blocks [num_blocks, block_tokens, row...] (per layer; for MLA row = [1, r + dr], the
// latent cache of infer/kv_cache.hpp cut into blocks); block_table [sequences, max_blocks] int64:
// token j of sequence s lives in block block_table[s, j / block_tokens], row j % block_tokens.
// Entries past a sequence's blocks are −1 and never read.
//
// paged_decode_attention takes 1 or 2 query tokens per sequence (2: the main model's token and the
// MTP module's draft, speculative decoding): query t of row a sits at position lengths[a] − T + t
// and attends the tokens up to itself.
//
// Devices. On the CPU (backend/cpu/decode_attention.hpp, double accumulation) every slot, length,
// position and table entry a call uses is checked. On a GPU (kernels/decode_attention/: the same
// kernels as the contiguous cache, over the table's addressing) the index tensors stay on the
// device, so only shapes, devices and sizes are checked on the host; the kernels never read or
// write outside the cache instead (kernels/decode_attention/args.hpp): paged_cache_write skips
// rows whose slot, position or table entry is out of range; paged_decode_attention gives zeros for
// a row whose slot or any of whose table entries (tokens 0 .. lengths[a] - 1) is out of range,
// clamps lengths to the table's max_blocks x block_tokens, and gives zeros for a query with no
// token to attend (lengths[a] < T). copy_block_rows (the allocator's copy-on-write) runs on any
// device.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kiln/backend/cpu/decode_attention.hpp"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/decode_attention.hpp"

namespace kiln {

namespace detail {

// The table entry of token j of sequence `seq`, checked: inside the table and a valid block.
inline std::int64_t checked_block(const char* op, const Tensor<std::int64_t>& table, std::int64_t seq, std::int64_t j,
                                  std::int64_t block_tokens, std::int64_t num_blocks) {
  const std::int64_t max_blocks = table.size(1), b = j / block_tokens;
  check(b < max_blocks, op, "position ", j, " of sequence ", seq, " needs block ", b, " of a table of ", max_blocks,
        " blocks per sequence");
  const std::int64_t block = table.data()[seq * max_blocks + b];
  check(block >= 0 && block < num_blocks, op, "sequence ", seq, "'s block ", b, " (position ", j, ") is ", block,
        ", outside the cache's ", num_blocks, " blocks");
  return block;
}

inline void check_table(const char* op, const Tensor<std::int64_t>& table, Device device) {
  check_defined(op, table);
  check(table.dim() == 2 && table.is_contiguous() && table.device() == device, op,
        "block_table must be a contiguous [sequences, max_blocks] int64 tensor on ", device, ", got shape ",
        table.shape(), " on ", table.device());
}

// Index tensors on the cache's device (a GPU kernel reads them there).
inline void check_index_devices(const char* op, const char* a_name, const Tensor<std::int64_t>& a,
                                const char* b_name, const Tensor<std::int64_t>& b, Device device) {
  check(a.device() == device && b.device() == device, op, a_name, " (", a.device(), ") and ", b_name, " (",
        b.device(), ") must be on the cache's device ", device);
}

// On a GPU: the table has at least one block per sequence, and a sequence of the table's
// max_blocks x block_tokens tokens fits the kernels' int32 positions.
inline void check_table_size(const char* op, const Tensor<std::int64_t>& table, std::int64_t block_tokens) {
  check(table.size(1) >= 1 && block_tokens >= 1 && table.size(1) * block_tokens <= (std::int64_t{1} << 30), op,
        "on a GPU the block table needs 1 .. 2^30 / block_tokens blocks per sequence, got ", table.size(1),
        " blocks of ", block_tokens, " tokens");
}

}  // namespace detail

// blocks[block of (slots[a], positions[a] + s)] = values[a, s, ...] for every batch row a and step s.
// blocks: contiguous [num_blocks, block_tokens, row...]; values [count, steps, row...]; slots,
// positions [count]. In place.
template <class T>
void paged_cache_write(const Tensor<T>& blocks, const Tensor<std::int64_t>& block_table,
                       const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& positions,
                       const Tensor<T>& values) {
  const char* op = "paged_cache_write";
  check_defined(op, blocks, slots, positions, values);
  check_same_device(op, blocks, values);
  detail::check_table(op, block_table, blocks.device());
  detail::check_index_devices(op, "slots", slots, "positions", positions, blocks.device());
  check(blocks.dim() >= 2 && blocks.is_contiguous(), op,
        "blocks must be a contiguous [num_blocks, block_tokens, ...], got shape ", blocks.shape());
  check(values.dim() == blocks.dim() && std::equal(values.shape().begin() + 2, values.shape().end(),
                                                   blocks.shape().begin() + 2),
        op, "values of shape ", values.shape(), " do not fit blocks of shape ", blocks.shape(),
        " (expected [count, steps, ", Shape(blocks.shape().begin() + 2, blocks.shape().end()), "])");
  const std::int64_t count = values.size(0), steps = values.size(1);
  const std::int64_t num_blocks = blocks.size(0), block_tokens = blocks.size(1);
  detail::check_index_vector(op, "slots", slots, count);
  detail::check_index_vector(op, "positions", positions, count);
  const Tensor<T> v = contiguous(values.detach());
  const Tensor<std::int64_t> sl = contiguous(slots), pos = contiguous(positions);
  const std::int64_t row = blocks.numel() / std::max<std::int64_t>(num_blocks * block_tokens, 1);
  if (count == 0 || steps == 0 || row == 0) return;
  if (!blocks.device().is_cpu()) {
    detail::check_table_size(op, block_table, block_tokens);
    launch_device_kernel(op, kernels::CacheWriteArgs{.launch = launch_on(op, blocks.device()),
                                                     .element_bytes = static_cast<int>(sizeof(T)),
                                                     .cache = blocks.data(),
                                                     .values = v.data(),
                                                     .slots = sl.data(),
                                                     .positions = pos.data(),
                                                     .count = count,
                                                     .steps = steps,
                                                     .row = row,
                                                     .num_slots = block_table.size(0),
                                                     .capacity = block_table.size(1) * block_tokens,
                                                     .block_table = block_table.data(),
                                                     .max_blocks = block_table.size(1),
                                                     .block_tokens = block_tokens,
                                                     .num_blocks = num_blocks});
    return;
  }
  for (std::int64_t a = 0; a < count; ++a) {
    const std::int64_t s = sl.data()[a], p = pos.data()[a];
    check(s >= 0 && s < block_table.size(0), op, "slot ", s, " of batch row ", a, " is outside the table's ",
          block_table.size(0), " sequences");
    check(p >= 0, op, "position ", p, " of batch row ", a, " is negative");
    for (std::int64_t j = p; j < p + steps; ++j) (void)detail::checked_block(op, block_table, s, j, block_tokens, num_blocks);
  }
  cpu::paged_cache_write(reinterpret_cast<std::uint8_t*>(blocks.data()), reinterpret_cast<const std::uint8_t*>(v.data()),
                         block_table.data(), sl.data(), pos.data(), count, steps,
                         row * static_cast<std::int64_t>(sizeof(T)), block_tokens, block_table.size(1));
}

// values [count, steps, row...] into a cache of either layout: paged_cache_write when `table` is
// defined (blocks [num_blocks, block_tokens, row...]), cache_write when it is not (a contiguous
// [slots, capacity, row...]).
template <class T>
void write_cache_rows(const Tensor<T>& cache, const Tensor<std::int64_t>& table, const Tensor<std::int64_t>& slots,
                      const Tensor<std::int64_t>& positions, const Tensor<T>& values) {
  if (table.defined()) {
    paged_cache_write(cache, table, slots, positions, values);
  } else {
    cache_write(cache, slots, positions, values);
  }
}

// T query tokens per batch row over its sequence's cached tokens:
//   q [count, T, heads, dk] (T = 1 or 2); k_blocks [num_blocks, block_tokens, kv_heads, dk];
//   v_blocks [num_blocks, block_tokens, kv_heads, dv] (last dim unit-stride; may be a view of
//   k_blocks' first dv columns, as in MLA); block_table [sequences, max_blocks]; slots, lengths
//   [count] -> out [count, T, heads, dv], with query t of row a attending tokens
//   j < lengths[a] − (T − 1 − t) of sequence slots[a] (lengths[a] >= T: its own tokens cached),
//   G = heads / kv_heads query heads per kv head.
// splits: on a GPU, the blocks each row's tokens are split over (kernels/decode_attention/
// decode_attention.cuh: the sequence split); 0 chooses from the SM count, 1 .. 128 forces a
// count (tests). implementation: on a GPU, which kernel (kernels/decode_attention/args.hpp,
// DecodeKernel: the CUDA-core one, or the tensor-core one for MLA's bf16 latent cache at (dk, dv)
// = (288, 256) or (576, 512)). The CPU ignores both.
template <class T>
Tensor<T> paged_decode_attention(const Tensor<T>& q, const Tensor<T>& k_blocks, const Tensor<T>& v_blocks,
                                 const Tensor<std::int64_t>& block_table, const Tensor<std::int64_t>& slots,
                                 const Tensor<std::int64_t>& lengths, double scale, int splits = 0,
                                 kernels::DecodeKernel implementation = kernels::DecodeKernel::automatic) {
  static_assert(is_floating<T>, "paged_decode_attention needs a floating type");
  const char* op = "paged_decode_attention";
  check_defined(op, q, k_blocks, v_blocks, slots, lengths);
  check_same_device(op, q, k_blocks, v_blocks);
  detail::check_table(op, block_table, q.device());
  detail::check_index_devices(op, "slots", slots, "lengths", lengths, q.device());
  check(q.dim() == 4 && k_blocks.dim() == 4 && v_blocks.dim() == 4, op,
        "needs q [count, T, heads, dk], k_blocks [num_blocks, block_tokens, kv_heads, dk], v_blocks [num_blocks, "
        "block_tokens, kv_heads, dv]; got q ",
        q.shape(), ", k_blocks ", k_blocks.shape(), ", v_blocks ", v_blocks.shape());
  const std::int64_t count = q.size(0), queries = q.size(1), heads = q.size(2), dk = q.size(3);
  const std::int64_t num_blocks = k_blocks.size(0), block_tokens = k_blocks.size(1), kv_heads = k_blocks.size(2);
  const std::int64_t dv = v_blocks.size(3);
  check(queries == 1 || queries == 2, op, "takes 1 or 2 query tokens per row, got q of shape ", q.shape());
  detail::check_cache_operands(op, count, heads, dk, k_blocks, v_blocks, scale, slots, lengths);
  const Tensor<T> qc = contiguous(q.detach());
  const Tensor<std::int64_t> sl = contiguous(slots), len = contiguous(lengths);
  check(splits >= 0 && splits <= kernels::kDecodeMaxSplits, op, "splits must be in [0, ", kernels::kDecodeMaxSplits,
        "] (0: automatic), got ", splits);
  Tensor<T> out({count, queries, heads, dv}, q.device());
  if (count == 0) return out;
  const auto& ks = k_blocks.strides();
  const auto& vs = v_blocks.strides();
  if (!q.device().is_cpu()) {
    detail::check_table_size(op, block_table, block_tokens);
    kernels::DecodeAttentionArgs args = detail::decode_attention_args(op, out, qc, k_blocks, v_blocks, sl, len, queries, scale);
    args.num_slots = block_table.size(0);
    args.capacity = block_table.size(1) * block_tokens;
    args.block_table = block_table.data();
    args.max_blocks = block_table.size(1);
    args.block_tokens = block_tokens;
    args.num_blocks = num_blocks;
    args.splits = splits;
    args.implementation = implementation;
    detail::launch_decode_attention<T>(op, args, q.device());
    return out;
  }
  for (std::int64_t a = 0; a < count; ++a) {
    const std::int64_t s = sl.data()[a], L = len.data()[a];
    check(s >= 0 && s < block_table.size(0), op, "slot ", s, " of batch row ", a, " is outside the table's ",
          block_table.size(0), " sequences");
    check(L >= queries, op, "length ", L, " of batch row ", a, " must be at least the ", queries,
          " query token(s) it holds");
    for (std::int64_t b = 0; b * block_tokens < L; ++b)
      (void)detail::checked_block(op, block_table, s, b * block_tokens, block_tokens, num_blocks);
  }
  cpu::paged_decode_attention(
      out.data(), qc.data(), k_blocks.data(), v_blocks.data(), block_table.data(), sl.data(), len.data(),
      cpu::CachedAttentionShape{count, static_cast<int>(queries), static_cast<int>(heads), static_cast<int>(kv_heads),
                                static_cast<int>(dk), static_cast<int>(dv), ks[2], vs[2]},
      cpu::PagedCacheShape{block_tokens, block_table.size(1), ks[0], ks[1], vs[0], vs[1]}, scale);
  return out;
}

// The first `rows` rows of block `from` into block `to`, in blocks [num_blocks, block_tokens,
// row...] (contiguous: those rows are one contiguous range in each block): the copy-on-write that
// infer::BlockAllocator::prepare_write asks for (its BlockCopy). Any device; 0 rows do nothing.
template <class T>
void copy_block_rows(const Tensor<T>& blocks, std::int64_t from, std::int64_t to, std::int64_t rows) {
  const char* op = "copy_block_rows";
  check_defined(op, blocks);
  check(blocks.dim() >= 2 && blocks.is_contiguous(), op,
        "blocks must be a contiguous [num_blocks, block_tokens, ...], got shape ", blocks.shape());
  if (rows == 0) return;
  const std::int64_t num_blocks = blocks.size(0), block_tokens = blocks.size(1);
  check(from >= 0 && from < num_blocks && to >= 0 && to < num_blocks && from != to && rows > 0 &&
            rows <= block_tokens,
        op, "copy of ", rows, " rows from block ", from, " to block ", to, " does not fit ", num_blocks,
        " blocks of ", block_tokens, " rows");
  const std::int64_t block_elements = blocks.numel() / num_blocks, row = block_elements / block_tokens;
  copy_bytes(blocks.data() + to * block_elements, blocks.device(), blocks.data() + from * block_elements,
             blocks.device(), static_cast<std::size_t>(rows * row) * sizeof(T));
}

}  // namespace kiln
