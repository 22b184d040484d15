// latent_cache_write on the GPU (ops/latent_cache_write.hpp, kernels/decode_attention/latent_write.cuh):
// MLA's decode step writing its new latent rows [rms_norm(c) | rope(k_pe)] into the cache in one
// launch. The fused kernel must give the composed step's values (rms_norm_into, rope_into and the
// cache write on the same GPU) bit for bit, and the CPU's within one bf16 rounding, at kiln's big
// config's (256, 32), DeepSeek-V3's (512, 64) and a small (24, 8) (3 vectors); one and two tokens a row;
// paged caches with 4- and 64-token blocks and a contiguous cache; kv_a as a slice of a wider
// product (the stacked q_a | kv_a output); rows outside the cache skipped; misaligned rows falling
// back to the composed step.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <kiln/core/kernel_trace.hpp>
#include <kiln/ops/factory.hpp>
#include <kiln/ops/latent_cache_write.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v, Device device) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())}, device);
}

struct Case {
  std::int64_t r, dr, steps, block_tokens;  // block_tokens 0: contiguous cache
};

std::string name(const Case& c) {
  return str("r ", c.r, " dr ", c.dr, " steps ", c.steps,
             c.block_tokens ? str(" paged, blocks of ", c.block_tokens) : std::string(" contiguous"));
}

// Writes count = 5 rows (one slot out of range on purpose: skipped) through latent_cache_write on
// the GPU, and the same through the composed step on the GPU and on the CPU; returns the caches.
template <class T>
void check_case(const Case& c, std::int64_t offset, bool expect_fused, std::uint64_t seed) {
  SCOPED_TRACE(str(name(c), " ", dtype_of<T>, " kv_a at column ", offset));
  manual_seed(seed);
  const std::int64_t count = 5, row = c.r + c.dr, width = offset + row + 40;  // kv_a: columns [offset, offset + row)
  const std::int64_t sequences = 4, capacity = 2 * (c.block_tokens ? c.block_tokens : 8);
  // Cache and table: paged, sequence s holds blocks (s + 1) % 5 ... in a pool of 2·sequences + 1
  // blocks; contiguous, [sequences, capacity].
  Tensor<T> cache0;
  Tensor<std::int64_t> table;
  if (c.block_tokens) {
    const std::int64_t per = capacity / c.block_tokens, pool = sequences * per + 1;
    std::vector<std::int64_t> t;
    for (std::int64_t s = 0; s < sequences; ++s)
      for (std::int64_t b = 0; b < per; ++b) t.push_back((s * per + b + 3) % pool);
    table = Tensor<std::int64_t>::from_vector(t, {sequences, per});
    cache0 = randn<T>({pool, c.block_tokens, 1, row});
  } else {
    cache0 = randn<T>({sequences, capacity, 1, row});
  }
  // Slots 2, 0, 3, 7 (outside: skipped), 1; positions ending in the last cached rows of slot 3.
  const std::vector<std::int64_t> slots{2, 0, 3, 7, 1};
  const std::vector<std::int64_t> positions{0, capacity / 2 - 1, capacity - c.steps, 1, 5 % (capacity - 1)};
  const Tensor<T> wide = randn<T>({count, c.steps, width});
  const Tensor<T> weight = rand<T>({c.r}, 0.5, 1.5);
  std::vector<std::int64_t> pos2;
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t s = 0; s < c.steps; ++s) pos2.push_back(positions[static_cast<std::size_t>(a)] + s);
  const Tensor<std::int64_t> positions2 = Tensor<std::int64_t>::from_vector(pos2, {count, c.steps});
  const double eps = 1e-6;

  // CPU: the composed step (rows of slot 7 dropped: the CPU refuses them).
  Tensor<T> cpu = clone(cache0);
  {
    const std::vector<std::int64_t> keep{0, 1, 2, 4};
    const Tensor<std::int64_t> k = ints(keep, Device::cpu());
    const Tensor<T> x = index_select(narrow(wide, -1, offset, row), 0, k);
    std::vector<std::int64_t> s, p;
    for (std::int64_t i : keep) {
      s.push_back(slots[static_cast<std::size_t>(i)]);
      p.push_back(positions[static_cast<std::size_t>(i)]);
    }
    latent_cache_write(cpu, table, ints(s, Device::cpu()), ints(p, Device::cpu()), x, weight, eps,
                       rope_tables<compute_t<T>>(index_select(positions2, 0, k), c.dr));
  }
  // GPU: the composed step and the fused op, from the same cache.
  const Tensor<T> x_gpu = narrow(on_gpu(wide), -1, offset, row);
  const Tensor<std::int64_t> table_gpu = table.defined() ? on_gpu(table) : Tensor<std::int64_t>();
  const auto tables = rope_tables<compute_t<T>>(on_gpu(positions2), c.dr);
  Tensor<T> composed = on_gpu(cache0);
  write_cache_rows(composed, table_gpu, ints(slots, gpu), ints(positions, gpu),
                   unsqueeze(normed_latent_rows(x_gpu, on_gpu(weight), eps, tables), 2));
  Tensor<T> fused = on_gpu(cache0);
  KernelTrace trace;
  latent_cache_write(fused, table_gpu, ints(slots, gpu), ints(positions, gpu), x_gpu, on_gpu(weight), eps, tables);
  EXPECT_EQ(trace.count("latent_cache_write"), expect_fused ? 1 : 0);
  const std::vector<T> f = on_cpu(fused).to_vector(), g = on_cpu(composed).to_vector(), h = cpu.to_vector();
  ASSERT_EQ(f.size(), g.size());
  std::int64_t differ = 0, far = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    const double a = static_cast<double>(f[i]), b = static_cast<double>(g[i]), e = static_cast<double>(h[i]);
    if (!(a == b)) ++differ;
    // One rounding of a value computed in another order: 2^-7 of its size (bf16 keeps 8 bits).
    if (!(std::abs(a - e) <= 0x1p-7 * std::abs(e) + 1e-30)) ++far;
  }
  EXPECT_EQ(differ, 0) << "elements where the fused kernel differs from the composed GPU step";
  EXPECT_EQ(far, 0) << "elements further than one rounding from the CPU's";
}

}  // namespace

TEST(LatentCacheWriteCuda, FusedEqualsComposedBitForBit) {
  KILN_REQUIRE_GPU();
  std::uint64_t seed = 700;
  for (const Case& c : std::vector<Case>{{256, 32, 1, 64}, {256, 32, 2, 4}, {256, 32, 1, 0}, {512, 64, 2, 64},
                                         {512, 64, 1, 0}, {24, 8, 2, 4}}) {
    check_case<bf16>(c, 384, true, seed++);  // the big config's stacked q_a | kv_a: kv_a at column 384
    check_case<bf16>(c, 0, true, seed++);
  }
  check_case<float>({256, 32, 2, 4}, 384, true, seed++);
  check_case<double>({256, 32, 1, 0}, 8, true, seed++);
  check_case<fp16>({512, 64, 2, 64}, 16, true, seed++);
}

TEST(LatentCacheWriteCuda, RowsTheKernelDoesNotTakeRunComposed) {
  KILN_REQUIRE_GPU();
  check_case<bf16>({256, 32, 2, 4}, 3, false, 800);  // rows at an odd column: not 16-byte aligned
  check_case<bf16>({20, 4, 1, 4}, 0, false, 801);    // r not a whole number of 16-byte vectors
  check_case<bf16>({24, 2, 2, 4}, 0, false, 803);    // cache rows of 52 bytes: not 16-byte aligned
  check_case<bf16>({2048, 64, 1, 4}, 0, false, 802);  // r past RMSNorm's one-warp rows (256 vectors)
}
