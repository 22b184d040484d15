// The FP8 latent cache on CUDA (ops/latent_fp8_cache.hpp; the FP8 variant of the decode attention
// kernel, kernels/decode_attention/decode_attention.cuh) against the CPU op (double accumulation,
// itself checked against the bf16-cache op over the dequantized cache in
// tests/infer/test_latent_fp8_cache.cpp):
//  - fp8_latent_cache_write on the GPU leaves the cache bit for bit as on the CPU (the quantize
//    kernel's bytes and scales, the rope part), paged and contiguous;
//  - fp8_latent_decode_attention at lengths 1, 63, 64, 65 and 1000 (and 5000, split), ragged
//    batches, sequences sharing their first blocks, shuffled tables, 1 and 2 query tokens, the
//    split forced (1, 3, 7, 64) and chosen, at kiln's big config (latent 256 + rope 32, 12 heads:
//    8 value columns a lane), DeepSeek-V3's (512 + 64: 16 columns a lane, 4 heads a block) and a
//    128 + 64 latent with 40 heads (4 columns a lane, several head chunks); contiguous too.
//    The latent tiles' magnitudes span 10^-3 .. 10^3 (each tile its own scale), so a scale read
//    for the wrong tile or token is far off; every row the table does not give a sequence holds
//    NaN (latent bytes, scales and rope), and outputs start poisoned. bf16 outputs: both devices
//    round a float / double result once, so they differ by the output rounding (2^-8 relative).
//    The split path gives the same bits twice.
//  - host-side checks (dtype, sizes).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <kiln/infer/kv_cache.hpp>
#include <kiln/ops/latent_fp8_cache.hpp>
#include <random>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

// values [1, L, 1, r + dr] of bf16: each 128-column tile of a token's latent scaled by its own
// 10^U(-3, 3), the rope part normal.
Tensor<bf16> latent_rows(std::int64_t L, std::int64_t r, std::int64_t dr, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> exponent(-3.0, 3.0);
  std::vector<bf16> v;
  for (std::int64_t t = 0; t < L; ++t) {
    double tile_scale = 1.0;
    for (std::int64_t d = 0; d < r; ++d) {
      if (d % 128 == 0) tile_scale = std::pow(10.0, exponent(rng));
      v.push_back(convert<bf16>(normal(rng) * tile_scale));
    }
    for (std::int64_t d = 0; d < dr; ++d) v.push_back(convert<bf16>(normal(rng)));
  }
  return Tensor<bf16>::from_vector(v, {1, L, 1, r + dr});
}

// A cache whose every part holds NaN (latent byte 0x7F is e4m3's NaN).
Fp8LatentCache<bf16> nan_cache(std::int64_t outer, std::int64_t rows, std::int64_t r, std::int64_t dr, Device device) {
  const float nan = std::nanf("");
  return {full<fp8_e4m3>({outer, rows, r}, fp8_e4m3::from_bits(0x7F), device),
          full<float>({outer, rows, (r + 127) / 128}, nan, device),
          full<bf16>({outer, rows, dr}, convert<bf16>(nan), device)};
}

Fp8LatentCache<bf16> to_device(const Fp8LatentCache<bf16>& c, Device device) {
  return {to(c.latent, device), to(c.scales, device), to(c.rope, device)};
}

void expect_same_bits(const Fp8LatentCache<bf16>& got, const Fp8LatentCache<bf16>& want) {
  const auto gl = on_cpu(got.latent).to_vector(), wl = want.latent.to_vector();
  ASSERT_EQ(gl.size(), wl.size());
  for (std::size_t i = 0; i < gl.size(); ++i) ASSERT_EQ(gl[i].bits, wl[i].bits) << "latent byte " << i;
  const auto gs = on_cpu(got.scales).to_vector(), ws = want.scales.to_vector();
  for (std::size_t i = 0; i < gs.size(); ++i)
    ASSERT_TRUE(gs[i] == ws[i] || (std::isnan(gs[i]) && std::isnan(ws[i]))) << "scale " << i;
  EXPECT_EQ(relative_error(on_cpu(got.rope), want.rope).relative, 0.0);
}

struct Case {
  std::vector<std::int64_t> lengths, share;  // per sequence; share[s]: leading blocks shared with s - 1
  std::int64_t bt, heads, r, dr;
  bool paged = true;
};

// The sequences' tables (paged: blocks shuffled over the pool, one spare entry of -1 each; shared
// leading blocks written by the first holder) and the cache written through the op, on the CPU
// and on the GPU (the same calls); unwritten rows NaN on both.
struct Built {
  Fp8LatentCache<bf16> cpu, gpu;
  Tensor<std::int64_t> table;  // undefined: contiguous (slot s = sequence s)
};

Built build(const Case& c, std::uint64_t seed) {
  const auto n = static_cast<std::int64_t>(c.lengths.size());
  const std::int64_t longest = *std::max_element(c.lengths.begin(), c.lengths.end());
  Built b;
  std::int64_t outer = n, rows = longest;
  if (c.paged) {
    std::int64_t max_blocks = 1, needed = 0;
    for (const std::int64_t L : c.lengths) {
      max_blocks = std::max(max_blocks, (L + c.bt - 1) / c.bt + 1);
      needed += (L + c.bt - 1) / c.bt;
    }
    outer = needed + 3;
    rows = c.bt;
    std::vector<std::int64_t> ids(static_cast<std::size_t>(outer));
    for (std::int64_t i = 0; i < outer; ++i) ids[static_cast<std::size_t>(i)] = i;
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
    std::vector<std::int64_t> table(static_cast<std::size_t>(n * max_blocks), -1);
    std::size_t next = 0;
    for (std::int64_t s = 0; s < n; ++s)
      for (std::int64_t blk = 0; blk * c.bt < c.lengths[static_cast<std::size_t>(s)]; ++blk)
        table[static_cast<std::size_t>(s * max_blocks + blk)] =
            s > 0 && blk < c.share[static_cast<std::size_t>(s)]
                ? table[static_cast<std::size_t>((s - 1) * max_blocks + blk)]
                : ids[next++];
    b.table = Tensor<std::int64_t>::from_vector(table, {n, max_blocks});
  }
  b.cpu = nan_cache(outer, rows, c.r, c.dr, Device::cpu());
  b.gpu = nan_cache(outer, rows, c.r, c.dr, gpu);
  const Tensor<std::int64_t> gtable = b.table.defined() ? on_gpu(b.table) : Tensor<std::int64_t>();
  for (std::int64_t s = 0; s < n; ++s) {
    const std::int64_t from = c.paged && s > 0 ? c.share[static_cast<std::size_t>(s)] * c.bt : 0;
    const std::int64_t L = c.lengths[static_cast<std::size_t>(s)] - from;
    if (L <= 0) continue;
    const Tensor<bf16> values = latent_rows(L, c.r, c.dr, seed + 10 + static_cast<std::uint64_t>(s));
    fp8_latent_cache_write(b.cpu, b.table, ints({s}), ints({from}), values);
    fp8_latent_cache_write(b.gpu, gtable, on_gpu(ints({s})), on_gpu(ints({from})), on_gpu(values));
  }
  return b;
}

// The GPU op against the CPU op at T query tokens and the given split count (0: automatic).
void check_case(const Case& c, const Built& b, int queries, int splits) {
  SCOPED_TRACE(::testing::Message() << (c.paged ? "paged" : "contiguous") << " heads " << c.heads << " latent " << c.r
                                    << " + " << c.dr << " T " << queries << " splits " << splits);
  const auto n = static_cast<std::int64_t>(c.lengths.size());
  // Batch rows: the sequences in reverse order, the longest one twice (two rows may read one
  // slot); with two query tokens only the sequences that hold both (rows past a length are NaN).
  std::vector<std::int64_t> sl, len;
  for (std::int64_t a = n - 1; a >= 0; --a)
    if (c.lengths[static_cast<std::size_t>(a)] >= queries)
      sl.push_back(a), len.push_back(c.lengths[static_cast<std::size_t>(a)]);
  const auto longest = std::max_element(c.lengths.begin(), c.lengths.end());
  sl.push_back(longest - c.lengths.begin()), len.push_back(*longest);
  const auto count = static_cast<std::int64_t>(sl.size());
  const auto q = randn<bf16>({count, queries, c.heads, c.r + c.dr});
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.r + c.dr)) / 30.0;  // keeps the softmax spread
  const auto want = fp8_latent_decode_attention(q, b.cpu, b.table, ints(sl), ints(len), scale);
  const Tensor<std::int64_t> table = b.table.defined() ? on_gpu(b.table) : Tensor<std::int64_t>();
  const auto qg = on_gpu(q);
  const auto slots = on_gpu(ints(sl)), lengths = on_gpu(ints(len));
  poison_cached_memory();
  const auto got = fp8_latent_decode_attention(qg, b.gpu, table, slots, lengths, scale, splits);
  EXPECT_LT(relative_error(on_cpu(got), want), 4e-3);
  if (splits != 1) {
    poison_cached_memory();
    const auto again = fp8_latent_decode_attention(qg, b.gpu, table, slots, lengths, scale, splits);
    EXPECT_EQ(relative_error(on_cpu(again), on_cpu(got)).relative, 0.0) << "a second run";
  }
}

void check_all(const Case& c, std::uint64_t seed, const std::vector<int>& splits) {
  Built b = build(c, seed);
  expect_same_bits(b.gpu, b.cpu);  // the GPU's writes are the CPU's
  for (int queries : {1, 2})
    for (int s : splits) check_case(c, b, queries, s);
}

// kiln's big MLA config at the odd lengths, a ragged batch, sequences 3 and 4 sharing
// the first block of 2 and 3, sequence 6 the first two blocks of 5.
TEST(LatentFp8CacheCuda, BigConfigMatchesTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(71);
  const Case big{{1, 63, 64, 65, 1000, 130, 200}, {0, 0, 0, 1, 1, 0, 2}, 64, 12, 256, 32};
  check_all(big, 71, {1, 0, 3, 7, 64});
  Case contiguous = big;
  contiguous.paged = false;
  check_all(contiguous, 72, {1, 0, 5});
}

TEST(LatentFp8CacheCuda, OtherShapesMatchTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(72);
  const std::vector<Case> cases = {
      {{600, 65, 1}, {0, 1, 0}, 64, 16, 512, 64},   // DeepSeek-V3: 16 columns a lane, 4 heads a block
      {{70, 33, 2}, {0, 0, 0}, 16, 40, 128, 64},    // 40 heads: several chunks; 4 columns a lane
      {{9, 17, 3, 40}, {0, 2, 0, 0}, 4, 4, 48, 8},  // a 48-value latent (3 pieces, one partial tile), 4-token blocks
      {{2, 63, 64, 65, 1000}, {0, 0, 0, 1, 1}, 64, 4, 256, 32},  // 4 heads a block: 8 pieces in flight
  };
  for (const Case& c : cases) check_all(c, 80, {0, 1, 3});
}

// Few long rows: the automatic count splits them and equals one split within the output rounding.
TEST(LatentFp8CacheCuda, LongRowsSplitAutomatically) {
  KILN_REQUIRE_GPU();
  manual_seed(73);
  check_all({{5000, 4097, 3000, 2}, {0, 10, 0, 0}, 64, 16, 256, 32}, 90, {0, 1, 128});
}

TEST(LatentFp8CacheCuda, HostChecks) {
  KILN_REQUIRE_GPU();
  const auto cache = Fp8LatentCache<float>::zeros(4, 8, 32, 8, gpu);
  const auto table = on_gpu(Tensor<std::int64_t>::from_vector({0, 1, 3, 2}, {2, 2}));
  const auto one = on_gpu(ints({0})), len = on_gpu(ints({5}));
  EXPECT_KILN_ERROR((void)fp8_latent_decode_attention(on_gpu(zeros<float>({1, 1, 2, 40})), cache, table, one, len, 1.0),
                    "fp8_latent_decode_attention", "needs a bf16 model", "got float32");
  const auto odd = Fp8LatentCache<bf16>::zeros(4, 8, 40, 8, gpu);  // 40: not a multiple of 16
  EXPECT_KILN_ERROR((void)fp8_latent_decode_attention(on_gpu(zeros<bf16>({1, 1, 2, 48})), odd, table, one, len, 1.0),
                    "fp8_latent_decode_attention", "multiple of 16 up to 512", "latent 40, rope 8");
  // The engine's cache refuses such a shape when it is made, before any prefill writes to it.
  EXPECT_KILN_ERROR((void)infer::KVCache<bf16>::latent(2, infer::CacheLayout::contiguous(2, 8), 40, 8, gpu,
                                                       infer::CacheFormat::fp8),
                    "KVCache::latent", "latent 40, rope 8");
  EXPECT_KILN_ERROR((void)infer::KVCache<float>::latent(2, infer::CacheLayout::contiguous(2, 8), 32, 8, gpu,
                                                        infer::CacheFormat::fp8),
                    "KVCache::latent", "needs a bf16 model");
  const auto ok = Fp8LatentCache<bf16>::zeros(4, 8, 32, 8, gpu);
  EXPECT_KILN_ERROR(
      (void)fp8_latent_decode_attention(on_gpu(zeros<bf16>({1, 1, 2, 40})), ok, table, ints({0}), len, 1.0),
      "fp8_latent_decode_attention", "must be on the cache's device");
  EXPECT_KILN_ERROR((void)fp8_latent_decode_attention(zeros<bf16>({1, 1, 2, 40}), ok, table, one, len, 1.0),
                    "fp8_latent_decode_attention", "the cache on cuda:0");
}

}  // namespace
