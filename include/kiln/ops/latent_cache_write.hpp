// MLA's decode step writing its new latent rows into the cache:
//
//   latent_cache_write(cache, table, slots, positions, kv_a, weight, eps, tables)
//
// kv_a [count, steps, r + dr]: kv_a_proj's output for the step's tokens, [c | k_pe] before the norm
// and rope (its rows may be a stride apart: a slice of a wider product, e.g. the stacked q_a | kv_a
// output); weight [r]: the latent norm's weight; tables: rope tables [count, steps, dr / 2]
// (nn::decode_rope_tables). For every row a and step s the cache row of token (slots[a],
// positions[a] + s) becomes
//   [ rms_norm(c, weight, eps) | rope(k_pe) ]   (rope's interleaved pairs, as MLA rotates k_pe)
// in `cache`: paged blocks [num_blocks, block_tokens, 1, r + dr] with `table`
// (ops/paged_attention.hpp), or a contiguous [slots, capacity, 1, r + dr] with an undefined table.
//
// The values are those of rms_norm_into, rope_into and write_cache_rows composed (the CPU, and any
// GPU case the fused kernel does not take, runs exactly that); on a GPU, for rows the kernel takes
// (kernels/decode_attention/args.hpp, latent_write_supported: r a whole number of 16-byte vectors,
// at most 128, aligned rows), one launch does all three with the same roundings, bit for bit.
// Rows outside the cache: as the cache writes (an error on the CPU, skipped on a GPU).
#pragma once

#include <cstdint>

#include "kiln/kernels/decode_attention/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/paged_attention.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/rope.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

// The composed form of the rows: [rms_norm(c) | rope(k_pe)] of kv_a [count, steps, r + dr] as a new
// tensor [count, steps, r + dr] (what latent_cache_write writes; the FP8 latent cache quantizes it).
template <class T>
Tensor<T> normed_latent_rows(const Tensor<T>& kv_a, const Tensor<T>& weight, double eps,
                             const RopeTables<compute_t<T>>& tables) {
  NoGradGuard no_grad;
  const std::int64_t r = weight.size(0), dr = kv_a.size(-1) - r;
  const Tensor<T> x = kv_a.detach();
  const Tensor<T> latent(x.shape(), x.device());
  rms_norm_into(narrow(latent, -1, 0, r), narrow(x, -1, 0, r), weight.detach(), eps);
  rope_into(unsqueeze(narrow(latent, -1, r, dr), 2), unsqueeze(narrow(x, -1, r, dr), 2), tables, RopeLayout::interleaved);
  return latent;
}

template <class T>
void latent_cache_write(const Tensor<T>& cache, const Tensor<std::int64_t>& table, const Tensor<std::int64_t>& slots,
                        const Tensor<std::int64_t>& positions, const Tensor<T>& kv_a, const Tensor<T>& weight,
                        double eps, const RopeTables<compute_t<T>>& tables) {
  static_assert(is_floating<T>, "latent_cache_write needs a floating element type");
  const char* op = "latent_cache_write";
  check_defined(op, cache, slots, positions, kv_a, weight, tables.cos, tables.sin);
  check_same_device(op, cache, kv_a, weight);
  check(kv_a.dim() == 3 && weight.dim() == 1 && weight.size(0) > 0 && kv_a.size(2) > weight.size(0), op,
        "needs kv_a [count, steps, r + dr] and weight [r] with dr > 0; got kv_a ", kv_a.shape(), " and weight ",
        weight.shape());
  const std::int64_t count = kv_a.size(0), steps = kv_a.size(1), r = weight.size(0), dr = kv_a.size(2) - r;
  check(cache.dim() == 4 && cache.size(2) == 1 && cache.size(3) == r + dr && cache.is_contiguous(), op,
        "cache of shape ", cache.shape(), " is not a contiguous latent cache [blocks or slots, tokens, 1, ", r + dr,
        "] for kv_a ", kv_a.shape());
  check(dr % 2 == 0 && tables.cos.shape() == Shape{count, steps, dr / 2} && tables.sin.shape() == tables.cos.shape(),
        op, "rope tables of shape ", tables.cos.shape(), " do not fit kv_a ", kv_a.shape(), " with r = ", r,
        " (expected [", count, ", ", steps, ", ", dr / 2, "], dr even)");
  if (count == 0 || steps == 0) return;

  // Rows one stride apart (the kernel walks (a, s) as one index), the last dim unit-stride.
  // (A dim of size 1 may carry any stride: it is never stepped over.)
  const bool row_strided =
      kv_a.stride(2) == 1 && (steps == 1 || count == 1 || kv_a.stride(0) == steps * kv_a.stride(1));
  const std::int64_t x_row_stride = steps == 1 ? kv_a.stride(0) : kv_a.stride(1);
  if (!cache.device().is_cpu() && row_strided &&
      kernels::latent_write_supported(sizeof(T), r, dr, x_row_stride, reinterpret_cast<std::uintptr_t>(kv_a.data()),
                                      reinterpret_cast<std::uintptr_t>(cache.data()),
                                      reinterpret_cast<std::uintptr_t>(weight.data())) &&
      weight.is_contiguous()) {
    detail::check_index_devices(op, "slots", slots, "positions", positions, cache.device());
    detail::check_index_vector(op, "slots", slots, count);
    detail::check_index_vector(op, "positions", positions, count);
    const Tensor<std::int64_t> sl = contiguous(slots), pos = contiguous(positions);
    const Tensor<compute_t<T>> cos = contiguous(tables.cos.detach()), sin = contiguous(tables.sin.detach());
    check(cos.device() == cache.device() && sin.device() == cache.device(), op, "rope tables on ", cos.device(),
          " must be on the cache's device ", cache.device());
    kernels::LatentWriteArgs args{.launch = launch_on(op, cache.device()),
                                  .dtype = dtype_of<T>,
                                  .cache = cache.data(),
                                  .x = kv_a.data(),
                                  .x_row_stride = x_row_stride,
                                  .weight = weight.data(),
                                  .eps = eps,
                                  .cos = cos.data(),
                                  .sin = sin.data(),
                                  .r = static_cast<int>(r),
                                  .dr = static_cast<int>(dr),
                                  .slots = sl.data(),
                                  .positions = pos.data(),
                                  .count = count,
                                  .steps = steps,
                                  .num_slots = cache.size(0),
                                  .capacity = cache.size(1),
                                  .block_table = nullptr,
                                  .max_blocks = 0,
                                  .block_tokens = 0,
                                  .num_blocks = 0};
    if (table.defined()) {
      detail::check_table(op, table, cache.device());
      detail::check_table_size(op, table, cache.size(1));
      args.num_slots = table.size(0);
      args.capacity = table.size(1) * cache.size(1);
      args.block_table = table.data();
      args.max_blocks = table.size(1);
      args.block_tokens = cache.size(1);
      args.num_blocks = cache.size(0);
    }
    launch_device_kernel(op, args);
    return;
  }
  // The composed step: norm and rope into a temporary row, then the cache write.
  write_cache_rows(cache, table, slots, positions, unsqueeze(normed_latent_rows(kv_a, weight, eps, tables), 2));
}

}  // namespace kiln
