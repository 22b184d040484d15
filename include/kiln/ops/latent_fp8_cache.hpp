// The FP8 latent cache of MLA decoding: each cached token's latent c (r = kv_lora_rank values) in
// e4m3 with one FP32 scale per 128 values (DeepSeek-V3's 1×128 activation tiles, math/fp8.hpp),
// and its rotated rope key k_pe (dr values) kept in the model's type. Per token and layer that is
// r + 4·ceil(r/128) + dr·sizeof(T) bytes against (r + dr)·sizeof(T) for the bf16 latent cache:
// 328 against 576 bytes at kiln's big config (r 256, dr 32), 656 against 1152 at DeepSeek-V3's
// (r 512, dr 64), so a decode step that reads the cache reads 43% less. The rope part stays exact
// because it carries the position (FlashMLA's FP8 cache for DeepSeek-V3.2 makes the same split).
//
// Layout, per layer, in either cache layout of infer/kv_cache.hpp (outer × rows = slots ×
// capacity, contiguous; num_blocks × block_tokens, paged, with the block table of
// ops/paged_attention.hpp):
//   latent [outer, rows, r]            e4m3
//   scales [outer, rows, ceil(r/128)]  float: the scale of latent columns 128 i .. 128 i + 127
//   rope   [outer, rows, dr]           T
// three tensors rather than one byte row, so that each part keeps its type and 16-byte alignment.
//
// The decode attention over it is MLA's absorbed decode (one kv head shared by every query head):
// key k_j = [latent_j ⊙ scale_j, rope_j], value v_j = latent_j ⊙ scale_j, the output staying in
// the latent space (dv = r) — ops/paged_attention.hpp's function with the cache dequantized as it
// is read. CPU reference backend/cpu/latent_fp8_cache.hpp (double accumulation); CUDA: the decode
// attention kernel's FP8 variant (kernels/decode_attention/decode_attention.cuh), bf16 models,
// r a multiple of 16 up to 512, dr a multiple of 8.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kiln/backend/cpu/latent_fp8_cache.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/fp8_gemm.hpp"
#include "kiln/ops/paged_attention.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

// One layer's FP8 latent cache (see the header comment for the layout).
template <class T>
struct Fp8LatentCache {
  Tensor<fp8_e4m3> latent;  // [outer, rows, r]
  Tensor<float> scales;     // [outer, rows, ceil(r / 128)]
  Tensor<T> rope;           // [outer, rows, dr]

  // Zeroed tensors for outer × rows tokens on `device`.
  static Fp8LatentCache zeros(std::int64_t outer, std::int64_t rows, std::int64_t r, std::int64_t dr, Device device) {
    check(outer > 0 && rows > 0 && r > 0 && dr >= 0, "Fp8LatentCache", "needs positive outer, rows and latent_dim and ",
          "rope_dim >= 0, got ", outer, ", ", rows, ", ", r, ", ", dr);
    return {kiln::zeros<fp8_e4m3>({outer, rows, r}, device),
            kiln::zeros<float>({outer, rows, (r + fp8::tile_size - 1) / fp8::tile_size}, device),
            kiln::zeros<T>({outer, rows, dr}, device)};
  }

  bool defined() const { return latent.defined(); }
  std::int64_t latent_dim() const { return latent.size(2); }
  std::int64_t rope_dim() const { return rope.size(2); }
  std::int64_t bytes() const {
    return latent.numel() + scales.numel() * static_cast<std::int64_t>(sizeof(float)) +
           rope.numel() * static_cast<std::int64_t>(sizeof(T));
  }

  // The first `rows` rows of block `from` into block `to` in all three parts (paged copy-on-write).
  void copy_block_rows(std::int64_t from, std::int64_t to, std::int64_t rows) const {
    kiln::copy_block_rows(latent, from, to, rows);
    kiln::copy_block_rows(scales, from, to, rows);
    if (rope.numel() > 0) kiln::copy_block_rows(rope, from, to, rows);
  }
};

namespace detail {

template <class T>
void check_fp8_latent_cache(const char* op, const Fp8LatentCache<T>& c) {
  check(c.latent.defined() && c.scales.defined() && c.rope.defined(), op, "the FP8 latent cache is not allocated");
  check(c.latent.dim() == 3 && c.scales.dim() == 3 && c.rope.dim() == 3 && c.latent.is_contiguous() &&
            c.scales.is_contiguous() && c.rope.is_contiguous(),
        op, "the FP8 latent cache needs contiguous latent [outer, rows, r], scales [outer, rows, ceil(r/128)] and ",
        "rope [outer, rows, dr]; got ", c.latent.shape(), ", ", c.scales.shape(), ", ", c.rope.shape());
  const std::int64_t r = c.latent.size(2);
  check(c.scales.size(0) == c.latent.size(0) && c.scales.size(1) == c.latent.size(1) &&
            c.scales.size(2) == (r + fp8::tile_size - 1) / fp8::tile_size && c.rope.size(0) == c.latent.size(0) &&
            c.rope.size(1) == c.latent.size(1),
        op, "the FP8 latent cache's parts do not fit each other: latent ", c.latent.shape(), ", scales ",
        c.scales.shape(), ", rope ", c.rope.shape());
  check(c.scales.device() == c.latent.device() && c.rope.device() == c.latent.device(), op,
        "the FP8 latent cache's parts must be on one device, got ", c.latent.device(), ", ", c.scales.device(), ", ",
        c.rope.device());
}

// Whether the GPU's decode kernel takes an FP8 latent cache of r latent and dr rope values in T
// (its FP8 variant: bf16, the latent in 16-value pieces up to 512, the rope part in 8-value
// pieces). The CPU takes any size and floating type.
template <class T>
constexpr bool fp8_latent_fits_gpu_kernel(std::int64_t r, std::int64_t dr) {
  return std::is_same_v<T, bf16> && r % 16 == 0 && r <= 512 && dr % 8 == 0;
}

// The error for a cache the GPU's kernel does not take, named for the caller.
template <class T>
void check_fp8_latent_gpu_shape(const char* op, std::int64_t r, std::int64_t dr) {
  check(fp8_latent_fits_gpu_kernel<T>(r, dr), op, "an FP8 latent cache on a GPU needs a bf16 model, a latent of a "
        "multiple of 16 up to 512 values and a rope part of a multiple of 8 (the decode kernel's FP8 variant), got ",
        dtype_of<T>, ", latent ", r, ", rope ", dr);
}

}  // namespace detail

// Writes values [count, steps, r + dr] (or [count, steps, 1, r + dr], the latent cache's row
// shape) at positions positions[a] .. + steps − 1 of sequences slots[a]: the first r columns of
// each token quantized per 1×128 tile (fp8::quantize's rule with its default amax floor 1e-4:
// scale = max(amax, 1e-4) / 448, round to nearest even; double values through float), the rest
// copied. table: the paged cache's block table, or undefined for a contiguous cache; the index
// rules are those of paged_cache_write / cache_write (checked on the CPU; on a GPU rows outside
// the cache are skipped).
template <class T>
void fp8_latent_cache_write(const Fp8LatentCache<T>& cache, const Tensor<std::int64_t>& table,
                            const Tensor<std::int64_t>& slots, const Tensor<std::int64_t>& positions,
                            const Tensor<T>& values) {
  static_assert(is_floating<T>, "fp8_latent_cache_write needs a floating type");
  const char* op = "fp8_latent_cache_write";
  detail::check_fp8_latent_cache(op, cache);
  check_defined(op, values);
  const std::int64_t r = cache.latent_dim(), dr = cache.rope_dim();
  check((values.dim() == 3 || (values.dim() == 4 && values.size(2) == 1)) && values.size(-1) == r + dr, op,
        "values of shape ", values.shape(), " are not [count, steps, ", r + dr, "] (or [count, steps, 1, ", r + dr,
        "]) for a cache of latent ", r, " + rope ", dr);
  check(values.device() == cache.latent.device(), op, "values on ", values.device(), ", the cache on ",
        cache.latent.device());
  const std::int64_t count = values.size(0), steps = values.size(1);
  if (count == 0 || steps == 0) return;
  const Tensor<T> rows = reshape(values.detach(), {count * steps, r + dr});
  auto quantize_latent = [&] {
    const Tensor<T> c = narrow(rows, 1, 0, r);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) return fp8::quantize(c, fp8::Tiling::row_1x128);
    else return fp8::quantize(cast<float>(c), fp8::Tiling::row_1x128);
  };
  const fp8::QuantizedMatrix q = quantize_latent();
  // q.scale is [tokens, kblocks] viewed over k-block-major storage: contiguous() puts each token's
  // scales together, as the cache keeps them.
  write_cache_rows(cache.latent, table, slots, positions, reshape(q.data, {count, steps, r}));
  write_cache_rows(cache.scales, table, slots, positions,
                   reshape(contiguous(q.scale), {count, steps, cache.scales.size(2)}));
  if (dr > 0)
    write_cache_rows(cache.rope, table, slots, positions, reshape(narrow(rows, 1, r, dr), {count, steps, dr}));
}

// The cache's tokens dequantized, [outer, rows, 1, r + dr] of [latent ⊙ scale, rope] in double on
// the CPU: the bf16 latent cache's row layout, for tests and debugging.
template <class T>
Tensor<double> dequantize_latent_cache(const Fp8LatentCache<T>& cache) {
  const char* op = "dequantize_latent_cache";
  detail::check_fp8_latent_cache(op, cache);
  const Tensor<fp8_e4m3> lat = to(cache.latent, Device::cpu());
  const Tensor<float> sc = to(cache.scales, Device::cpu());
  const Tensor<T> rope = to(cache.rope, Device::cpu());
  const std::int64_t tokens = lat.size(0) * lat.size(1), r = lat.size(2), dr = rope.size(2), nb = sc.size(2);
  Tensor<double> out({lat.size(0), lat.size(1), 1, r + dr});
  const auto& value = cpu::e4m3_values();
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(lat.data());
  for (std::int64_t t = 0; t < tokens; ++t) {
    double* o = out.data() + t * (r + dr);
    for (std::int64_t d = 0; d < r; ++d)
      o[d] = static_cast<double>(value[bytes[t * r + d]]) * static_cast<double>(sc.data()[t * nb + d / fp8::tile_size]);
    for (std::int64_t d = 0; d < dr; ++d) o[r + d] = static_cast<double>(rope.data()[t * dr + d]);
  }
  return out;
}

// T query tokens per batch row over an FP8 latent cache: q [count, T, heads, r + dr] (T = 1 or 2;
// [q_lat, q_pe] of the absorbed decode), slots and lengths [count] -> [count, T, heads, r], query t
// of row a attending tokens j < lengths[a] − (T − 1 − t) of sequence slots[a] with keys
// [latent ⊙ scale, rope] and values latent ⊙ scale. table: the paged cache's block table, or
// undefined for a contiguous cache (slots then index its outer dim). splits as in
// paged_decode_attention (GPU only; 0: automatic). The index rules and the GPU's out-of-range
// behaviour are ops/paged_attention.hpp's.
template <class T>
Tensor<T> fp8_latent_decode_attention(const Tensor<T>& q, const Fp8LatentCache<T>& cache,
                                      const Tensor<std::int64_t>& table, const Tensor<std::int64_t>& slots,
                                      const Tensor<std::int64_t>& lengths, double scale, int splits = 0) {
  static_assert(is_floating<T>, "fp8_latent_decode_attention needs a floating type");
  const char* op = "fp8_latent_decode_attention";
  detail::check_fp8_latent_cache(op, cache);
  check_defined(op, q, slots, lengths);
  const Device device = q.device();
  check(cache.latent.device() == device, op, "q on ", device, ", the cache on ", cache.latent.device());
  const bool paged = table.defined();
  if (paged) detail::check_table(op, table, device);
  detail::check_index_devices(op, "slots", slots, "lengths", lengths, device);
  const std::int64_t r = cache.latent_dim(), dr = cache.rope_dim();
  check(q.dim() == 4 && (q.size(1) == 1 || q.size(1) == 2) && q.size(3) == r + dr && q.size(2) >= 1, op,
        "needs q [count, T (1 or 2), heads, ", r + dr, "] for a cache of latent ", r, " + rope ", dr, ", got shape ",
        q.shape());
  const std::int64_t count = q.size(0), queries = q.size(1), heads = q.size(2);
  detail::check_index_vector(op, "slots", slots, count);
  detail::check_index_vector(op, "lengths", lengths, count);
  check(std::isfinite(scale), op, "scale must be finite, got ", scale);
  check(splits >= 0 && splits <= kernels::kDecodeMaxSplits, op, "splits must be in [0, ", kernels::kDecodeMaxSplits,
        "] (0: automatic), got ", splits);
  const std::int64_t outer = cache.latent.size(0), rows = cache.latent.size(1);
  const Tensor<T> qc = contiguous(q.detach());
  const Tensor<std::int64_t> sl = contiguous(slots), len = contiguous(lengths);
  Tensor<T> out({count, queries, heads, r}, device);
  if (count == 0) return out;

  if (!device.is_cpu()) {
    detail::check_fp8_latent_gpu_shape<T>(op, r, dr);
    check(heads <= 0x7fffffff, op, "takes at most 2^31 - 1 heads on a GPU, got ", heads);
    if (paged) detail::check_table_size(op, table, rows);
    kernels::DecodeAttentionArgs args{.launch = launch_on(op, device),
                                      .dtype = dtype_of<T>,
                                      .out = out.data(),
                                      .q = qc.data(),
                                      // token index = outer index · rows + row: the FP8 rows' addressing
                                      .k_slot_stride = rows,
                                      .k_row_stride = 1,
                                      .v_slot_stride = rows,
                                      .v_row_stride = 1,
                                      .slots = sl.data(),
                                      .lengths = len.data(),
                                      .count = count,
                                      .queries = static_cast<int>(queries),
                                      .heads = static_cast<int>(heads),
                                      .kv_heads = 1,
                                      .dk = static_cast<int>(r + dr),
                                      .dv = static_cast<int>(r),
                                      .num_slots = paged ? table.size(0) : outer,
                                      .capacity = paged ? table.size(1) * rows : rows,
                                      .scale = scale,
                                      .splits = splits,
                                      .latent = cache.latent.data(),
                                      .latent_scales = cache.scales.data(),
                                      .rope = cache.rope.data(),
                                      // The only kernel with an FP8 variant: a process-wide choice of
                                      // the tensor-core kernel (DecodeKernelScope) does not apply here.
                                      .implementation = kernels::DecodeKernel::simt};
    if (paged) {
      args.block_table = table.data();
      args.max_blocks = table.size(1);
      args.block_tokens = rows;
      args.num_blocks = outer;
    }
    detail::launch_decode_attention<T>(op, args, device);
    return out;
  }

  for (std::int64_t a = 0; a < count; ++a) {
    const std::int64_t s = sl.data()[a], L = len.data()[a];
    check(s >= 0 && s < (paged ? table.size(0) : outer), op, "slot ", s, " of batch row ", a, " is outside the ",
          paged ? table.size(0) : outer, paged ? " sequences of the block table" : " slots of the cache");
    check(L >= queries, op, "length ", L, " of batch row ", a, " must be at least the ", queries,
          " query token(s) it holds");
    if (paged) {
      for (std::int64_t b = 0; b * rows < L; ++b) (void)detail::checked_block(op, table, s, b * rows, rows, outer);
    } else {
      check(L <= rows, op, "length ", L, " of batch row ", a, " is over the cache's capacity ", rows);
    }
  }
  const cpu::Fp8LatentRows<T> c{reinterpret_cast<const std::uint8_t*>(cache.latent.data()), cache.scales.data(),
                                cache.rope.data(), static_cast<int>(r), static_cast<int>(dr)};
  const std::int64_t* tb = paged ? table.data() : nullptr;
  const std::int64_t max_blocks = paged ? table.size(1) : 0;
  cpu::fp8_latent_attention(
      out.data(), qc.data(), c, len.data(), count, static_cast<int>(queries), static_cast<int>(heads),
      [&](std::int64_t a, std::int64_t j) {
        const std::int64_t s = sl.data()[a];
        return paged ? tb[s * max_blocks + j / rows] * rows + j % rows : s * rows + j;
      },
      scale);
  return out;
}

}  // namespace kiln
