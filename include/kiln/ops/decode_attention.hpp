// The two KV-cache operations of the generation engine (infer/): writing new keys/values (or MLA
// latents) into a preallocated cache, and attending one new query token per sequence over its
// cached past. CPU reference backend/cpu/decode_attention.hpp; CUDA kernels in
// kernels/decode_attention/. Neither is differentiable: generation runs without a graph.
//
// A cache is one preallocated tensor [slots, capacity, row...]: a slot per sequence, so a batch
// of sequences with different lengths decodes together and the past is never moved or copied.
// Which slot and position each batch row uses comes in device tensors (slots, positions,
// lengths), so a decode step needs no host values and can be replayed as a CUDA graph.
//
// Checks: on the CPU every slot, position and length is checked (kiln::Error naming the op). On a
// GPU the index tensors stay on the device (reading them back would cost a synchronisation per
// step); the kernels skip out-of-range rows instead of writing or reading outside the cache
// (cache_write drops them; decode_attention outputs zeros), so bad indices give wrong numbers,
// never corrupt memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kiln/backend/cpu/decode_attention.hpp"
#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

namespace detail {

inline void check_index_vector(const char* op, const char* what, const Tensor<std::int64_t>& t, std::int64_t count) {
  check(t.shape() == Shape{count}, op, what, " must be [", count, "] (one per batch row), got shape ", t.shape());
}

// The checks both cache layouts share (this file's contiguous one, ops/paged_attention.hpp's
// paged one): k [outer, rows, kv_heads, dk] and v [outer, rows, kv_heads, dv] fit each other and
// q's heads and dk, their last dims are unit-stride, the scale is finite, and slots and lengths
// hold one entry per batch row.
template <class T>
void check_cache_operands(const char* op, std::int64_t count, std::int64_t heads, std::int64_t dk, const Tensor<T>& k,
                          const Tensor<T>& v, double scale, const Tensor<std::int64_t>& slots,
                          const Tensor<std::int64_t>& lengths) {
  const std::int64_t kv_heads = k.size(2), dv = v.size(3);
  check(k.size(3) == dk && v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == kv_heads && kv_heads > 0 &&
            heads % kv_heads == 0 && dk > 0 && dv > 0,
        op, "q with ", heads, " heads of ", dk, ", keys ", k.shape(), " and values ", v.shape(),
        " do not fit (keys and values over the same cache rows and kv_heads; kv_heads dividing the query heads; "
        "q's dk = the keys')");
  check(k.strides()[3] == 1 && v.strides()[3] == 1, op, "the caches' last dim must be unit-stride, got k strides ",
        k.strides(), " and v strides ", v.strides());
  check(std::isfinite(scale), op, "scale must be finite, got ", scale);
  check_index_vector(op, "slots", slots, count);
  check_index_vector(op, "lengths", lengths, count);
  check(heads <= 0x7fffffff && dk <= 0x7fffffff && dv <= 0x7fffffff, op, "sizes too large: ", heads, " heads of ", dk,
        ", dv ", dv);
}

// The kernel arguments both cache layouts share: out [count, queries, heads, dv] and q (contiguous),
// caches k [outer, rows, kv_heads, dk] and v [outer, rows, kv_heads, dv] by their strides (outer:
// slots or blocks), the index vectors and the scale. The caller adds its addressing (num_slots,
// capacity; a paged cache's block table) and may force a split count (0: automatic).
template <class T>
kernels::DecodeAttentionArgs decode_attention_args(const char* op, const Tensor<T>& out, const Tensor<T>& q,
                                                   const Tensor<T>& k, const Tensor<T>& v,
                                                   const Tensor<std::int64_t>& slots,
                                                   const Tensor<std::int64_t>& lengths, std::int64_t queries,
                                                   double scale) {
  const auto& ks = k.strides();
  const auto& vs = v.strides();
  return kernels::DecodeAttentionArgs{.launch = launch_on(op, q.device()),
                                      .dtype = dtype_of<T>,
                                      .out = out.data(),
                                      .q = q.data(),
                                      .k = k.data(),
                                      .v = v.data(),
                                      .k_slot_stride = ks[0],
                                      .k_row_stride = ks[1],
                                      .k_head_stride = ks[2],
                                      .v_slot_stride = vs[0],
                                      .v_row_stride = vs[1],
                                      .v_head_stride = vs[2],
                                      .slots = slots.data(),
                                      .lengths = lengths.data(),
                                      .count = q.size(0),
                                      .queries = static_cast<int>(queries),
                                      .heads = static_cast<int>(q.size(-2)),
                                      .kv_heads = static_cast<int>(k.size(2)),
                                      .dk = static_cast<int>(q.size(-1)),
                                      .dv = static_cast<int>(v.size(3)),
                                      .scale = scale,
                                      .splits = 0};
}

// The kernel decode_attention, paged_decode_attention and fp8_latent_decode_attention run on a GPU
// when a call names none (DecodeKernel::automatic), process-wide; DecodeKernelScope sets it for a
// scope (tests, benchmarks: e.g. prefer_mma for a whole model's decode).
inline kernels::DecodeKernel& default_decode_kernel() {
  static kernels::DecodeKernel kernel = kernels::DecodeKernel::automatic;
  return kernel;
}

// Launches decode attention on a GPU: the split count first (from the SM count unless
// args.splits forces one), then its float workspace (double for double inputs), allocated here so
// that the kernels allocate nothing (CUDA graphs), then the kernels.
template <class T>
void launch_decode_attention(const char* op, kernels::DecodeAttentionArgs args, Device device) {
  if (args.implementation == kernels::DecodeKernel::automatic) args.implementation = default_decode_kernel();
  int chosen = 1;
  launch_device_kernel(op, kernels::DecodeAttentionPlanArgs{.launch = args.launch, .problem = &args, .splits = &chosen});
  args.splits = chosen;
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  Tensor<C> workspace;
  if (chosen > 1) {
    workspace = Tensor<C>({kernels::decode_attention_workspace_elements(args)}, device);
    args.workspace = workspace.data();
  }
  launch_device_kernel(op, args);
}

}  // namespace detail

// Sets the decode kernel that calls naming none use (detail::default_decode_kernel) for the
// lifetime of the scope, then restores the previous one.
class DecodeKernelScope {
 public:
  explicit DecodeKernelScope(kernels::DecodeKernel kernel) : previous_(detail::default_decode_kernel()) {
    detail::default_decode_kernel() = kernel;
  }
  ~DecodeKernelScope() { detail::default_decode_kernel() = previous_; }
  DecodeKernelScope(const DecodeKernelScope&) = delete;
  DecodeKernelScope& operator=(const DecodeKernelScope&) = delete;

 private:
  kernels::DecodeKernel previous_;
};

// cache[slots[a], positions[a] + s, ...] = values[a, s, ...] for every batch row a and step s.
// cache: contiguous [num_slots, capacity, row...]; values: [count, steps, row...] with the same row
// dims; slots, positions: [count] int64. The cache is written in place (it is a handle: the
// caller's tensor sees the new rows).
template <class T>
void cache_write(const Tensor<T>& cache, const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& positions,
                 const Tensor<T>& values) {
  const char* op = "cache_write";
  check_defined(op, cache, slots, positions, values);
  check_same_device(op, cache, values);
  check(slots.device() == cache.device() && positions.device() == cache.device(), op, "slots (", slots.device(),
        ") and positions (", positions.device(), ") must be on the cache's device ", cache.device());
  check(cache.dim() >= 2 && cache.is_contiguous(), op, "cache must be a contiguous [slots, capacity, ...], got shape ",
        cache.shape());
  check(values.dim() == cache.dim() && std::equal(values.shape().begin() + 2, values.shape().end(),
                                                  cache.shape().begin() + 2),
        op, "values of shape ", values.shape(), " do not fit cache of shape ", cache.shape(),
        " (expected [count, steps, ", Shape(cache.shape().begin() + 2, cache.shape().end()), "])");
  const std::int64_t count = values.size(0), steps = values.size(1);
  const std::int64_t num_slots = cache.size(0), capacity = cache.size(1);
  detail::check_index_vector(op, "slots", slots, count);
  detail::check_index_vector(op, "positions", positions, count);
  const std::int64_t row = cache.numel() / std::max<std::int64_t>(num_slots * capacity, 1);
  const Tensor<T> v = contiguous(values.detach());
  const Tensor<std::int64_t> sl = contiguous(slots), pos = contiguous(positions);
  if (count == 0 || steps == 0 || row == 0) return;
  if (cache.device().is_cpu()) {
    for (std::int64_t a = 0; a < count; ++a) {
      check(sl.data()[a] >= 0 && sl.data()[a] < num_slots, op, "slot ", sl.data()[a], " of batch row ", a,
            " is outside the cache's ", num_slots, " slots");
      check(pos.data()[a] >= 0 && pos.data()[a] + steps <= capacity, op, "positions ", pos.data()[a], "..",
            pos.data()[a] + steps - 1, " of batch row ", a, " do not fit the cache's capacity ", capacity);
    }
    cpu::cache_write(reinterpret_cast<std::uint8_t*>(cache.data()), reinterpret_cast<const std::uint8_t*>(v.data()),
                     sl.data(), pos.data(), count, steps, row * static_cast<std::int64_t>(sizeof(T)), capacity);
  } else {
    launch_device_kernel(op, kernels::CacheWriteArgs{.launch = launch_on(op, cache.device()),
                                                     .element_bytes = static_cast<int>(sizeof(T)),
                                                     .cache = cache.data(),
                                                     .values = v.data(),
                                                     .slots = sl.data(),
                                                     .positions = pos.data(),
                                                     .count = count,
                                                     .steps = steps,
                                                     .row = row,
                                                     .num_slots = num_slots,
                                                     .capacity = capacity});
  }
}

// One query per batch row against its slot's first lengths[a] cached positions:
//   q [count, heads, dk]; k_cache [slots, capacity, kv_heads, dk]; v_cache [slots, capacity,
//   kv_heads, dv] (any strides with the last dim unit-stride: v may be a narrowed view of k, as
//   in MLA); slots, lengths [count] int64 -> out [count, heads, dv], with
//   out[a, h] = softmax_j(scale · q[a, h]·k[slot, j, h / G]) · v[slot, j, h / G] over j < lengths[a],
//   G = heads / kv_heads (Hugging Face's repeat_kv grouping). lengths[a] >= 1.
// implementation: on a GPU, which kernel (kernels/decode_attention/args.hpp, DecodeKernel); the
// CPU ignores it.
template <class T>
Tensor<T> decode_attention(const Tensor<T>& q, const Tensor<T>& k_cache, const Tensor<T>& v_cache,
                           const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& lengths, double scale,
                           kernels::DecodeKernel implementation = kernels::DecodeKernel::automatic) {
  static_assert(is_floating<T>, "decode_attention needs a floating type");
  const char* op = "decode_attention";
  check_defined(op, q, k_cache, v_cache, slots, lengths);
  check_same_device(op, q, k_cache, v_cache);
  check(slots.device() == q.device() && lengths.device() == q.device(), op, "slots (", slots.device(),
        ") and lengths (", lengths.device(), ") must be on the device of q ", q.device());
  check(q.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4, op,
        "needs q [count, heads, dk], k_cache [slots, capacity, kv_heads, dk], v_cache [slots, capacity, kv_heads, "
        "dv]; got q ",
        q.shape(), ", k_cache ", k_cache.shape(), ", v_cache ", v_cache.shape());
  const std::int64_t count = q.size(0), heads = q.size(1), dk = q.size(2);
  const std::int64_t num_slots = k_cache.size(0), capacity = k_cache.size(1), kv_heads = k_cache.size(2);
  const std::int64_t dv = v_cache.size(3);
  detail::check_cache_operands(op, count, heads, dk, k_cache, v_cache, scale, slots, lengths);
  const Tensor<T> qc = contiguous(q.detach());
  const Tensor<std::int64_t> sl = contiguous(slots), len = contiguous(lengths);
  Tensor<T> out({count, heads, dv}, q.device());
  if (count == 0) return out;
  const auto& ks = k_cache.strides();
  const auto& vs = v_cache.strides();
  if (q.device().is_cpu()) {
    for (std::int64_t a = 0; a < count; ++a) {
      check(sl.data()[a] >= 0 && sl.data()[a] < num_slots, op, "slot ", sl.data()[a], " of batch row ", a,
            " is outside the cache's ", num_slots, " slots");
      check(len.data()[a] >= 1 && len.data()[a] <= capacity, op, "length ", len.data()[a], " of batch row ", a,
            " is outside [1, capacity = ", capacity, "]");
    }
    cpu::decode_attention(out.data(), qc.data(), k_cache.data(), v_cache.data(), sl.data(), len.data(),
                          cpu::DecodeAttentionShape{count, static_cast<int>(heads), static_cast<int>(kv_heads),
                                                    static_cast<int>(dk), static_cast<int>(dv), ks[0], ks[1], ks[2],
                                                    vs[0], vs[1], vs[2]},
                          scale);
  } else {
    kernels::DecodeAttentionArgs args = detail::decode_attention_args(op, out, qc, k_cache, v_cache, sl, len, 1, scale);
    args.num_slots = num_slots;
    args.capacity = capacity;
    args.implementation = implementation;
    detail::launch_decode_attention<T>(op, args, q.device());
  }
  return out;
}

}  // namespace kiln
