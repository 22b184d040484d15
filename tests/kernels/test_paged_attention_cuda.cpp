// The paged KV-cache ops on CUDA (ops/paged_attention.hpp over kernels/decode_attention/; the
// CUDA-core kernel, and the tensor-core one for MLA's bf16 latent cache) against
// the CPU op of the same type (double accumulation, itself checked against independent references
// in tests/infer/test_paged_attention.cpp): paged_decode_attention at lengths 1, 63, 64, 65 and
// 1000, ragged batches, sequences sharing their first blocks, block tables out of order, 1 and 2
// query tokens, the sequence split forced (1, 3, 7, 12, 33, 64 splits) and chosen, MLA's latent cache (v
// a view of k), grouped kv heads with separate values, element-load shapes; float, bf16, double.
// Every block and row the table does not give a sequence holds NaN, and every output starts as
// NaN (poisoned memory): reading outside a sequence or leaving an output unwritten shows. The
// split path gives the same bits on a second run (a fixed combine order). paged_cache_write
// equals the CPU op bit for bit; out-of-range table entries give zeros or are skipped; host-side
// errors.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <kiln/core/kernel_trace.hpp>
#include <kiln/ops/paged_attention.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

// A paged cache on the CPU: `lengths` sequences whose blocks are scattered over the pool in
// random order (the table is not monotone), sequence s > 0 sharing its first share[s] blocks with
// sequence s - 1 (the shared rows written once, by the first; sequence s - 1 fills them), every
// other row NaN.
template <class T>
struct PagedCache {
  Tensor<T> blocks;            // [num_blocks, bt, kv_heads, d]
  Tensor<std::int64_t> table;  // [sequences, max_blocks], -1 past each sequence's blocks
};

template <class T>
PagedCache<T> paged_cache(const std::vector<std::int64_t>& lengths, const std::vector<std::int64_t>& share,
                          std::int64_t bt, std::int64_t kv_heads, std::int64_t d, std::uint64_t seed) {
  const auto n = static_cast<std::int64_t>(lengths.size());
  std::int64_t max_blocks = 1, needed = 0;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::int64_t b = (lengths[static_cast<std::size_t>(s)] + bt - 1) / bt;
    max_blocks = std::max(max_blocks, b + 1);  // one entry more than the longest: -1, never read
    needed += b;
  }
  const std::int64_t num_blocks = needed + 5;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(num_blocks));
  for (std::int64_t i = 0; i < num_blocks; ++i) ids[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::int64_t> table(static_cast<std::size_t>(n * max_blocks), -1);
  std::size_t next = 0;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::int64_t shared = s > 0 ? share[static_cast<std::size_t>(s)] : 0;
    if (shared > 0 && shared * bt > lengths[static_cast<std::size_t>(s - 1)])  // a mistake in a case
      throw std::logic_error("paged_cache: sequence " + std::to_string(s) +
                             " shares blocks its predecessor leaves unfilled");
    for (std::int64_t b = 0; b * bt < lengths[static_cast<std::size_t>(s)]; ++b)
      table[static_cast<std::size_t>(s * max_blocks + b)] =
          b < shared ? table[static_cast<std::size_t>((s - 1) * max_blocks + b)] : ids[next++];
  }
  PagedCache<T> c{full<T>({num_blocks, bt, kv_heads, d}, convert<T>(std::nan(""))),
                  Tensor<std::int64_t>::from_vector(table, {n, max_blocks})};
  for (std::int64_t s = 0; s < n; ++s) {
    const std::int64_t from = s > 0 ? share[static_cast<std::size_t>(s)] * bt : 0;
    const std::int64_t L = lengths[static_cast<std::size_t>(s)] - from;
    if (L > 0) paged_cache_write(c.blocks, c.table, ints({s}), ints({from}), randn<T>({1, L, kv_heads, d}));
  }
  return c;
}

struct Case {
  std::vector<std::int64_t> lengths, share;  // per sequence
  std::int64_t bt, kv_heads, heads, dk, dv;
  bool latent;  // v = the first dv columns of k (MLA); else a cache of its own
};

// The GPU op against the CPU op at T query tokens and the given split count (0: automatic), with
// the given kernel (the CUDA-core one unless named: automatic picks the tensor-core kernel where it
// applies).
template <class T>
void check_case(const Case& c, int queries, int splits, double tolerance,
                kernels::DecodeKernel kernel = kernels::DecodeKernel::simt) {
  SCOPED_TRACE(::testing::Message() << dtype_name<T> << " heads " << c.heads << "/" << c.kv_heads << " dk " << c.dk
                                    << " dv " << c.dv << " bt " << c.bt << " T " << queries << " splits " << splits
                                    << (kernel == kernels::DecodeKernel::mma     ? " mma.sync kernel"
                                        : kernel == kernels::DecodeKernel::wgmma ? " Hopper kernel"
                                                                                 : ""));
  const auto n = static_cast<std::int64_t>(c.lengths.size());
  const PagedCache<T> k = paged_cache<T>(c.lengths, c.share, c.bt, c.kv_heads, c.dk, 7);
  const PagedCache<T> v_own = paged_cache<T>(c.lengths, c.share, c.bt, c.kv_heads, c.dv, 7);  // same table
  // Batch rows: the sequences in reverse order, the first one twice (two rows may read one slot).
  std::vector<std::int64_t> sl, len;
  for (std::int64_t a = n - 1; a >= 0; --a) sl.push_back(a), len.push_back(c.lengths[static_cast<std::size_t>(a)]);
  sl.push_back(0), len.push_back(c.lengths[0]);
  const auto count = static_cast<std::int64_t>(sl.size());
  const auto q = randn<T>({count, queries, c.heads, c.dk});
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  auto pick_v = [&](const Tensor<T>& kk, const Tensor<T>& vv) { return c.latent ? narrow(kk, 3, 0, c.dv) : vv; };
  const auto want = paged_decode_attention(q, k.blocks, pick_v(k.blocks, v_own.blocks), k.table, ints(sl), ints(len), scale);
  const auto kg = on_gpu(k.blocks), vg = on_gpu(v_own.blocks);
  const auto table = on_gpu(k.table), slots = on_gpu(ints(sl)), lengths = on_gpu(ints(len));
  const auto qg = on_gpu(q);
  poison_cached_memory();
  const auto got = paged_decode_attention(qg, kg, pick_v(kg, vg), table, slots, lengths, scale, splits, kernel);
  EXPECT_LT(relative_error(on_cpu(got), want), tolerance);
  if (splits != 1) {  // the split path again: the same bits (the splits are combined in a fixed order)
    poison_cached_memory();
    const auto again = paged_decode_attention(qg, kg, pick_v(kg, vg), table, slots, lengths, scale, splits, kernel);
    EXPECT_EQ(relative_error(on_cpu(again), on_cpu(got)).relative, 0.0) << "a second run";
  }
}

// `one` at 1 query token and at 2 (its first length raised to 2: every sequence holds both
// queries), at each split count, on the given kernel.
void check_splits(const Case& one, std::initializer_list<int> splits, kernels::DecodeKernel kernel) {
  Case two = one;
  two.lengths[0] = std::max<std::int64_t>(two.lengths[0], 2);
  for (int s : splits) {
    check_case<bf16>(one, 1, s, 0x1p-7, kernel);
    check_case<bf16>(two, 2, s, 0x1p-7, kernel);
  }
}

// `c` at other head counts, 1 and 2 query tokens, 1 and 3 splits, on the given kernel (its first
// length raised to 2).
void check_heads(Case c, std::initializer_list<std::int64_t> heads, kernels::DecodeKernel kernel) {
  c.lengths[0] = std::max<std::int64_t>(c.lengths[0], 2);
  for (std::int64_t h : heads) {
    c.heads = h;
    for (int queries : {1, 2}) {
      check_case<bf16>(c, queries, 1, 0x1p-7, kernel);
      check_case<bf16>(c, queries, 3, 0x1p-7, kernel);
    }
  }
}

// Rows 1, 2 and 3 of a batch of 5 whose slots or table entries lie out of range give zeros on the
// given kernel; rows 0 and 4 equal the CPU op's. MLA's bf16 latent at (288, 256), 12 heads, the
// values a view of the keys (one copy on the GPU).
void expect_out_of_range_rows_give_zeros(const Tensor<bf16>& latent, const Tensor<std::int64_t>& table,
                                         const std::vector<std::int64_t>& sl, const std::vector<std::int64_t>& len,
                                         kernels::DecodeKernel kernel) {
  const auto latent_gpu = on_gpu(latent);
  const auto ql = randn<bf16>({5, 1, 12, 288});
  for (int splits : {1, 2}) {
    poison_cached_memory();
    const auto out = on_cpu(paged_decode_attention(on_gpu(ql), latent_gpu, narrow(latent_gpu, 3, 0, 256),
                                                   on_gpu(table), on_gpu(ints(sl)), on_gpu(ints(len)), 1.0, splits,
                                                   kernel));
    for (std::int64_t a : {1, 2, 3})
      for (bf16 x : narrow(out, 0, a, 1).to_vector())
        EXPECT_EQ(static_cast<float>(x), 0.0f) << "row " << a << " splits " << splits;
    for (std::size_t a : {0, 4}) {
      const auto at = static_cast<std::int64_t>(a);
      const auto want = paged_decode_attention(narrow(ql, 0, at, 1), latent, narrow(latent, 3, 0, 256), table,
                                               ints({sl[a]}), ints({len[a]}), 1.0);
      EXPECT_LT(relative_error(narrow(out, 0, at, 1), want), 0x1p-7) << "row " << a << " splits " << splits;
    }
  }
}

// float: both devices sum exactly-widened products, the GPU in float (2e-6 was the contiguous
// kernel's bound; 1e-5 leaves room for the combine of up to 64 splits); bf16: both round a
// float/double result once, so they differ by the output rounding (2^-8 relative at most).
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-12;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else return 4e-3;
}

// Splits 1 (no combine), automatic, 3, 7, 12, 33 (4 sequences on 132 SMs) and 64.
template <class T>
void check_all_splits(const Case& c, int queries) {
  for (int splits : {1, 0, 3, 7, 12, 33, 64}) check_case<T>(c, queries, splits, tolerance<T>());
}

// kiln's big MLA config (latent 256 + rope 32, values the latent, 12 heads, 64-token blocks) at the
// issue's odd lengths, a ragged batch, and sequences 2-4 sharing the first block of the previous
// one: sequences 3 and 4 share the first block of 2 and 3 (so 2, 3, 4 all hold 2's first block),
// sequence 6 the first two blocks of 5.
TEST(PagedDecodeAttentionCuda, MlaShapeMatchesTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(61);
  const Case mla{{1, 63, 64, 65, 1000, 130, 200}, {0, 0, 0, 1, 1, 0, 2}, 64, 1, 12, 288, 256, true};
  check_all_splits<bf16>(mla, 1);
  check_all_splits<float>(mla, 1);
  Case two = mla;  // two query tokens: every sequence holds at least both
  two.lengths[0] = 2;
  check_all_splits<bf16>(two, 2);
  check_all_splits<float>(two, 2);
}

// The tensor-core kernel (DecodeKernel::mma: MLA's bf16 latent cache at (dk, dv) = (288, 256) or
// (576, 512); kernels/decode_attention/decode_attention_mma.cuh) against the CPU op: the big
// config's shape at the odd lengths with shared blocks, 1 and 2 query tokens, splits 1, 3, 7, 64
// and automatic; 16-token and 4-token blocks (a 64-key tile spans several blocks); long rows split
// automatically; 128 heads x 2 tokens (four chunks of 64 query rows) and 40 heads (a partial
// chunk: padding rows, a warp with no real rows); DeepSeek-V3's (576, 512), where two warps share
// each 16 rows (each its 256 output columns), at 12, 16, 40 and 128 heads; the key groups (several
// warps to each 16 rows, each a share of every tile's keys, merged at the end: 4 at 12 or 16 rows,
// 2 at 24 or 32, 1 above) at both head-dim pairs, at lengths below a tile and lengths whose last
// tile leaves some groups no key (1, 2, 17, 33, 63, 65, 130), unsplit and split. It rounds the
// probabilities to bf16 before P·V, as FlashAttention does, so its bound is the fused attention
// kernel's (tests/kernels/test_attention_cuda.cpp), 2^-7, not the output rounding alone. The
// contiguous cache through decode_attention likewise.
TEST(PagedDecodeAttentionCuda, TensorCoreKernelMatchesTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(66);
  constexpr auto mma = kernels::DecodeKernel::mma;
  // G = 1 first (KILN_DECODE_KEY_GROUPS=off): the kernel as it was before its key groups.
  std::optional<ScopedEnv> key_groups(std::in_place, "KILN_DECODE_KEY_GROUPS", "off");
  const Case mla{{1, 63, 64, 65, 1000, 130, 200}, {0, 0, 0, 1, 1, 0, 2}, 64, 1, 12, 288, 256, true};
  check_splits(mla, {1, 0, 3, 7, 64}, mma);
  {  // it is the kernel that ran; prefer_mma and automatic pick it here too, and the CUDA-core one
     // for float
    KernelTrace trace;
    check_case<bf16>(mla, 1, 1, 0x1p-7, mma);
    check_case<bf16>(mla, 1, 1, 0x1p-7, kernels::DecodeKernel::prefer_mma);
    check_case<bf16>(mla, 1, 1, 0x1p-7, kernels::DecodeKernel::automatic);
    check_case<float>(mla, 1, 1, tolerance<float>(), kernels::DecodeKernel::prefer_mma);
    check_case<float>(mla, 1, 1, tolerance<float>(), kernels::DecodeKernel::automatic);
    // (automatic and prefer_mma take the Hopper kernel first where it applies: an sm_90 GPU)
    const int hopper = gpu_is_hopper() ? 2 : 0;
    EXPECT_EQ(trace.count("decode_attention/mma"), 3 - hopper);
    EXPECT_EQ(trace.count("decode_attention/wgmma"), hopper);
    EXPECT_EQ(trace.count("decode_attention/simt"), 2);
  }
  const std::vector<Case> cases = {
      {{40, 17, 9, 40, 300}, {0, 2, 0, 0, 1}, 16, 1, 12, 288, 256, true},  // 16-token blocks
      {{9, 17, 3, 40}, {0, 2, 0, 0}, 4, 1, 12, 288, 256, true},           // 4-token blocks
      {{5000, 4097, 3000, 2}, {0, 10, 0, 0}, 64, 1, 16, 288, 256, true},  // long rows: split automatically
      {{300, 65, 2}, {0, 1, 0}, 64, 1, 128, 288, 256, true},              // 128 heads: 2 or 4 chunks
      {{70, 33, 2}, {0, 0, 0}, 64, 1, 40, 288, 256, true},                // 40 heads: a partial chunk
      {{600, 65, 2}, {0, 1, 0}, 64, 1, 16, 576, 512, true},               // DeepSeek-V3: two warps a row group
      {{130, 2}, {0, 0}, 16, 1, 128, 576, 512, true},                     // and 128 heads
  };
  for (const Case& c : cases)
    for (int queries : {1, 2}) {
      check_case<bf16>(c, queries, 0, 0x1p-7, mma);
      check_case<bf16>(c, queries, 3, 0x1p-7, mma);
    }
  // Key groups (the kernel's G, the default: 4 warps to each 16 rows at 16 query rows or fewer, 2
  // at 17-32, 1 above) at both head-dim pairs: 12 heads x 1 token (12 rows: G 4), x 2 (24: G 2),
  // 16 x 1 (16: G 4) and x 2 (32: G 2), 40 heads (G 1, a padding warp; x 2: a partial second
  // chunk). Lengths below one tile (1, 2: a group of 16 keys with one key, three with none), 17 and
  // 33 (the last tile's later groups empty), 63, 65 (one key in the second tile), 130 sharing 65's
  // first block; one split, automatic (here 1), 3 (the 65-key sequence's third split empty) and 64.
  key_groups.emplace("KILN_DECODE_KEY_GROUPS", "on");
  for (const auto& [dk, dv] : {std::pair<std::int64_t, std::int64_t>{288, 256}, {576, 512}}) {
    const Case one{{1, 17, 33, 63, 65, 130}, {0, 0, 0, 0, 0, 1}, 64, 1, 12, dk, dv, true};
    check_splits(one, {1, 0, 3, 64}, mma);
    check_heads(one, {16, 40}, mma);
  }
  // The contiguous cache: rows [count, capacity, 1, dk], slots in reverse, ragged lengths, at both
  // head-dim pairs.
  const std::vector<std::int64_t> len{1, 64, 65, 700, 129};
  const auto n = static_cast<std::int64_t>(len.size());
  std::vector<std::int64_t> sl;
  for (std::int64_t a = n - 1; a >= 0; --a) sl.push_back(a);
  for (const auto& [dk, dv] : {std::pair<std::int64_t, std::int64_t>{288, 256}, {576, 512}}) {
    SCOPED_TRACE(::testing::Message() << "contiguous, dk " << dk);
    const auto cache = randn<bf16>({n, 700, 1, dk});
    const auto q = randn<bf16>({n, 12, dk});
    const double scale = 1.0 / std::sqrt(static_cast<double>(dk - dv / 2));
    const auto want = decode_attention(q, cache, narrow(cache, 3, 0, dv), ints(sl), ints(len), scale);
    const auto cg = on_gpu(cache);
    poison_cached_memory();
    const auto got =
        decode_attention(on_gpu(q), cg, narrow(cg, 3, 0, dv), on_gpu(ints(sl)), on_gpu(ints(len)), scale, mma);
    EXPECT_LT(relative_error(on_cpu(got), want), 0x1p-7);
  }
  // Where it does not apply, asking for it is an error.
  const auto kf = on_gpu(randn<float>({2, 64, 1, 288}));
  EXPECT_KILN_ERROR((void)paged_decode_attention(on_gpu(randn<float>({1, 1, 12, 288})), kf, narrow(kf, 3, 0, 256),
                                                 on_gpu(Tensor<std::int64_t>::from_vector({0, 1}, {1, 2})),
                                                 on_gpu(ints({0})), on_gpu(ints({5})), 1.0, 0, mma),
                    "decode_attention", "the tensor-core kernel takes MLA's latent cache in bf16", "dtype float32");
}

// The Hopper kernels (DecodeKernel::wgmma: wgmma and TMA, MLA's bf16 latent cache at (288, 256),
// kernels/decode_attention/decode_attention_hopper.cuh, and at DeepSeek-V3's (576, 512), the
// seesaw kernel, decode_attention_seesaw.cuh: cases listed below) against the CPU op, on an
// sm_90 GPU. The first one's
// two modes: shared rows (T H <= 64: both consumer warpgroups hold the same rows and take
// alternate key tiles, merged at the end) at 12 heads x 1 and 2 tokens, 40 x 1, 64 x 1 (the
// boundary); rows (128 rows a block, 64 a consumer) at 33 x 2 (66 rows: the second consumer has
// 2 real rows), 40 x 2 (80), 128 x 1 and x 2 (one and two chunks). The big config's odd lengths
// with shared blocks (1, 63, 64, 65, 1000, 130, 200: a last tile of 1 key, 63, none past a whole
// tile), splits 1, 3, 7, 64 and automatic (a consumer of the shared-rows mode without a tile:
// lengths of one tile), long rows split automatically, 128-token blocks (a tile at row 64 of its
// block), the contiguous cache at a capacity that is not a multiple of the tile (700: TMA fills the
// rows past it with zeros). Every unused row of the pool is NaN (paged_cache): the rows past a
// split's end in its last tile must not reach the output (the kernel zeroes their values). Rows
// whose slot or table entry is out of range give zeros. Asking for it where it does not apply
// (16-token blocks) is an error. Bound: the mma.sync kernel's, 2^-7 (P rounded to bf16).
TEST(PagedDecodeAttentionCuda, HopperKernelMatchesTheCpuOp) {
  KILN_REQUIRE_GPU();
  if (!gpu_is_hopper()) GTEST_SKIP() << "not an sm_90 GPU";
  manual_seed(67);
  constexpr auto wgmma = kernels::DecodeKernel::wgmma;
  const Case mla{{1, 63, 64, 65, 1000, 130, 200}, {0, 0, 0, 1, 1, 0, 2}, 64, 1, 12, 288, 256, true};
  check_splits(mla, {1, 0, 3, 7, 64}, wgmma);
  check_heads(mla, {33, 40, 64, 128}, wgmma);
  const std::vector<Case> cases = {
      {{5000, 4097, 3000, 2}, {0, 10, 0, 0}, 64, 1, 16, 288, 256, true},  // long rows: split automatically
      {{300, 129, 2, 700}, {0, 1, 0, 0}, 128, 1, 12, 288, 256, true},    // 128-token blocks
      {{300, 65, 2}, {0, 1, 0}, 128, 1, 128, 288, 256, true},            // and 128 heads
  };
  for (const Case& c : cases)
    for (int queries : {1, 2}) {
      check_case<bf16>(c, queries, 0, 0x1p-7, wgmma);
      check_case<bf16>(c, queries, 3, 0x1p-7, wgmma);
    }
  {  // it is the kernel that ran, and the one automatic and prefer_mma pick
    KernelTrace trace;
    check_case<bf16>(mla, 1, 1, 0x1p-7, wgmma);
    check_case<bf16>(mla, 1, 1, 0x1p-7, kernels::DecodeKernel::automatic);
    check_case<bf16>(mla, 1, 1, 0x1p-7, kernels::DecodeKernel::prefer_mma);
    EXPECT_EQ(trace.count("decode_attention/wgmma"), 3);
  }
  // The contiguous cache (decode_attention: one query token): [count, 700, 1, 288], slots in
  // reverse, ragged lengths, 12 and 128 heads.
  const std::vector<std::int64_t> len{2, 64, 65, 700, 129};
  const auto n = static_cast<std::int64_t>(len.size());
  std::vector<std::int64_t> sl;
  for (std::int64_t a = n - 1; a >= 0; --a) sl.push_back(a);
  const auto cache = randn<bf16>({n, 700, 1, 288});
  const auto cg = on_gpu(cache);
  for (std::int64_t heads : {12, 128}) {
    SCOPED_TRACE(::testing::Message() << "contiguous, heads " << heads);
    const auto q = randn<bf16>({n, heads, 288});
    const auto want = decode_attention(q, cache, narrow(cache, 3, 0, 256), ints(sl), ints(len), 0.07);
    poison_cached_memory();
    const auto got =
        decode_attention(on_gpu(q), cg, narrow(cg, 3, 0, 256), on_gpu(ints(sl)), on_gpu(ints(len)), 0.07, wgmma);
    EXPECT_LT(relative_error(on_cpu(got), want), 0x1p-7);
  }
  // Out-of-range rows: 64-token blocks 2, 0 | 1, 7 (outside the 4), 3 | 3; rows of slot 0 (fine),
  // slot 1 (entry 7 in use), slot 5 (outside the table), slot 0 at length 150 (entry -1 in use),
  // slot 2 (fine).
  const auto table = Tensor<std::int64_t>::from_vector({2, 0, -1, 1, 7, 3, 3, -1, -1}, {3, 3});
  expect_out_of_range_rows_give_zeros(randn<bf16>({4, 64, 1, 288}), table, {0, 1, 5, 0, 2}, {70, 100, 4, 150, 30},
                                      wgmma);
  // DeepSeek-V3's (576, 512): the seesaw kernel (decode_attention_seesaw.cuh: chunks of 64 rows,
  // the two consumers each owning alternate tiles and 256 of the output columns). 16 heads x 1 and
  // 2 tokens (one chunk, padding rows), 40 x 2 (a partial second chunk), 128 x 1 and x 2 (two and
  // four chunks); the odd lengths with shared blocks give a split 1, 2, 3 and 16 tiles (a last
  // tile without a partner: 1, 3; a last tile of 1 key: 65, 1000's splits), splits 1, automatic,
  // 3, 7 and 64; 128-token blocks; the contiguous cache at capacity 700.
  {
    SCOPED_TRACE("DeepSeek-V3's (576, 512)");
    const Case v3{{1, 63, 64, 65, 1000, 130, 200}, {0, 0, 0, 1, 1, 0, 2}, 64, 1, 16, 576, 512, true};
    check_splits(v3, {1, 0, 3, 7, 64}, wgmma);
    check_heads(v3, {40, 128}, wgmma);
    const Case blocks128{{300, 129, 2, 700}, {0, 1, 0, 0}, 128, 1, 16, 576, 512, true};
    for (int queries : {1, 2}) check_case<bf16>(blocks128, queries, 0, 0x1p-7, wgmma);
    {  // automatic picks it, and it is the kernel that ran
      KernelTrace trace;
      check_case<bf16>(v3, 1, 1, 0x1p-7, kernels::DecodeKernel::automatic);
      EXPECT_EQ(trace.count("decode_attention/wgmma"), 1);
    }
    const auto wide = randn<bf16>({n, 700, 1, 576});
    const auto wide_g = on_gpu(wide);
    for (std::int64_t heads : {16, 128}) {
      SCOPED_TRACE(::testing::Message() << "contiguous, heads " << heads);
      const auto q = randn<bf16>({n, heads, 576});
      const auto want = decode_attention(q, wide, narrow(wide, 3, 0, 512), ints(sl), ints(len), 0.05);
      poison_cached_memory();
      const auto got = decode_attention(on_gpu(q), wide_g, narrow(wide_g, 3, 0, 512), on_gpu(ints(sl)),
                                        on_gpu(ints(len)), 0.05, wgmma);
      EXPECT_LT(relative_error(on_cpu(got), want), 0x1p-7);
    }
  }
  // Where it does not apply (16-token blocks), asking for it is an error.
  const auto small = on_gpu(randn<bf16>({4, 16, 1, 288}));
  EXPECT_KILN_ERROR((void)paged_decode_attention(on_gpu(randn<bf16>({1, 1, 12, 288})), small, narrow(small, 3, 0, 256),
                                                 on_gpu(Tensor<std::int64_t>::from_vector({0, 1}, {1, 2})),
                                                 on_gpu(ints({0})), on_gpu(ints({5})), 1.0, 0, wgmma),
                    "decode_attention", "the Hopper kernel takes MLA's latent cache", "blocks of 16");
}

TEST(PagedDecodeAttentionCuda, OtherShapesMatchTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(62);
  const std::vector<Case> cases = {
      {{5, 130, 64, 100, 300}, {0, 0, 0, 1, 1}, 64, 2, 6, 64, 64, false},  // GQA, values of their own
      {{9, 17, 3, 40}, {0, 2, 0, 0}, 4, 2, 4, 13, 7, false},              // odd sizes: element loads, 4-token blocks
      {{70, 33, 2}, {0, 0, 0}, 16, 1, 40, 72, 64, true},                  // 40 heads: several chunks, the last partial
      {{600, 65}, {0, 1}, 64, 1, 16, 576, 512, true},                     // DeepSeek-V3's MLA sizes
      {{2, 63, 64, 65, 1000}, {0, 0, 0, 1, 1}, 64, 1, 4, 288, 256, true},  // 4 heads a block: 6 key pieces in flight
      {{40, 9}, {0, 0}, 16, 1, 2, 72, 64, true},                          // and 9 pieces, 5 and 4 a half
  };
  for (const Case& c : cases)
    for (int queries : {1, 2}) {
      check_case<float>(c, queries, 0, tolerance<float>());
      check_case<float>(c, queries, 5, tolerance<float>());
      check_case<bf16>(c, queries, 0, tolerance<bf16>());
      check_case<bf16>(c, queries, 3, tolerance<bf16>());
      check_case<double>(c, queries, 1, tolerance<double>());
      check_case<double>(c, queries, 4, tolerance<double>());
    }
}

// Long rows with few of them: the automatic count splits them (8 blocks of 16 heads for 132
// SMs), and equals one split within float rounding.
TEST(PagedDecodeAttentionCuda, LongRowsSplitAutomatically) {
  KILN_REQUIRE_GPU();
  manual_seed(63);
  const Case longer{{5000, 4097, 3000, 2}, {0, 10, 0, 0}, 64, 1, 16, 288, 256, true};
  for (int queries : {1, 2}) {
    check_case<bf16>(longer, queries, 0, tolerance<bf16>());
    check_case<float>(longer, queries, 0, tolerance<float>());
    check_case<float>(longer, queries, 128, tolerance<float>());
  }
}

// On the device, indices are not checked on the host: a row whose slot is outside the table, or
// one of whose table entries (for its tokens) is outside the pool, gives zeros; the other rows
// are right; lengths over the table clamp to it.
TEST(PagedDecodeAttentionCuda, OutOfRangeRowsGiveZeros) {
  KILN_REQUIRE_GPU();
  manual_seed(64);
  auto blocks = randn<float>({4, 8, 1, 16});
  // 3 sequences of up to 3 blocks of 8 tokens: blocks 2, 0 | 1, 7 (outside the 4), 3 | 3.
  const auto table = Tensor<std::int64_t>::from_vector({2, 0, -1, 1, 7, 3, 3, -1, -1}, {3, 3});
  const auto q = randn<float>({5, 1, 2, 16});
  // Rows: slot 0 (fine, 9 tokens), slot 1 (entry 7 outside the 4 blocks), slot 5 (outside the
  // table), slot 0 at length 17 (entry -1 in use), slot 2 (fine: 3 tokens of block 3).
  const std::vector<std::int64_t> sl = {0, 1, 5, 0, 2}, len = {9, 12, 4, 17, 3};
  for (int splits : {1, 2}) {
    poison_cached_memory();
    const auto got = on_cpu(paged_decode_attention(on_gpu(q), on_gpu(blocks), on_gpu(blocks), on_gpu(table),
                                                   on_gpu(ints(sl)), on_gpu(ints(len)), 1.0, splits));
    for (std::int64_t a : {1, 2, 3})
      for (float x : narrow(got, 0, a, 1).to_vector()) EXPECT_EQ(x, 0.0f) << "row " << a << " splits " << splits;
    for (std::size_t a : {0, 4}) {
      const auto at = static_cast<std::int64_t>(a);
      const auto want = paged_decode_attention(narrow(q, 0, at, 1), blocks, blocks, table, ints({sl[a]}), ints({len[a]}), 1.0);
      EXPECT_LT(relative_error(narrow(got, 0, at, 1), want), 1e-5) << "row " << a << " splits " << splits;
    }
  }
  // Two query tokens at length 1: query 0 has no token to attend (zeros), query 1 sees token 0.
  const auto q2 = randn<float>({1, 2, 2, 16});
  const auto got = on_cpu(paged_decode_attention(on_gpu(q2), on_gpu(blocks), on_gpu(blocks), on_gpu(table),
                                                 on_gpu(ints({0})), on_gpu(ints({1})), 1.0));
  for (float x : narrow(got, 1, 0, 1).to_vector()) EXPECT_EQ(x, 0.0f);
  const auto row0 = narrow(narrow(blocks, 0, 2, 1), 1, 0, 1).to_vector();  // token 0 of slot 0: block 2, row 0
  const auto second = narrow(got, 1, 1, 1).to_vector();
  for (std::size_t i = 0; i < second.size(); ++i) EXPECT_EQ(second[i], row0[i % 16]) << "one key: p = 1";

  // The same rows through the mma.sync kernel.
  expect_out_of_range_rows_give_zeros(randn<bf16>({4, 8, 1, 288}), table, sl, len, kernels::DecodeKernel::mma);
}

TEST(PagedCacheWriteCuda, BitExactAndSkipsOutOfRangeRows) {
  KILN_REQUIRE_GPU();
  manual_seed(65);
  for (std::int64_t row : {std::int64_t{288}, std::int64_t{7}}) {  // 16-byte words, and elements
    // 6 blocks of 4 tokens; sequence 0 holds blocks 5, 0, 3, -, 2 and sequence 1 blocks 4, 1, -, 9
    // (outside the pool), 3: max_blocks 5, 20 tokens a sequence.
    const auto base = randn<bf16>({6, 4, 1, row});
    const auto table = Tensor<std::int64_t>::from_vector({5, 0, 3, -1, 2, 4, 1, -1, 9, 3}, {2, 5});
    const auto values = randn<bf16>({4, 6, 1, row});
    // Sequence 1 at positions 0..5 (blocks 4, 1), sequence 0 at 5..10 (blocks 0, 3): each write
    // starts or ends inside a block.
    auto cpu = clone(base);
    paged_cache_write(cpu, table, ints({1, 0}), ints({0, 5}), narrow(values, 0, 0, 2));
    auto gpu = on_gpu(base);
    paged_cache_write(gpu, on_gpu(table), on_gpu(ints({1, 0})), on_gpu(ints({0, 5})), on_gpu(narrow(values, 0, 0, 2)));
    EXPECT_EQ(relative_error(on_cpu(gpu), cpu).relative, 0.0) << "row " << row;
    // Out of range on the device, skipped row by row: slot 2 (outside the table); sequence 0 at
    // 10..15 (10, 11 land in block 3; 12..15 meet entry -1); sequence 1 at 8..13 (entries -1 and
    // 9); sequence 0 at 18..23 (18, 19 land in block 2; 20.. are past its 20 tokens).
    auto g2 = on_gpu(base);
    paged_cache_write(g2, on_gpu(table), on_gpu(ints({2, 0, 1, 0})), on_gpu(ints({0, 10, 8, 18})), on_gpu(values));
    auto expect = clone(base);
    paged_cache_write(expect, table, ints({0, 0}), ints({10, 18}),
                      narrow(cat(std::vector<Tensor<bf16>>{narrow(values, 0, 1, 1), narrow(values, 0, 3, 1)}, 0), 1, 0, 2));
    EXPECT_EQ(relative_error(on_cpu(g2), expect).relative, 0.0) << "row " << row;
  }
}

TEST(PagedDecodeAttentionCuda, HostChecks) {
  KILN_REQUIRE_GPU();
  const auto blocks = on_gpu(zeros<float>({4, 8, 1, 6}));
  const auto table = Tensor<std::int64_t>::from_vector({0, 1, 3, 2}, {2, 2});
  const auto q = on_gpu(zeros<float>({1, 1, 2, 6}));
  const auto one = on_gpu(ints({0})), len = on_gpu(ints({5}));
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, blocks, table, one, len, 1.0), "paged_decode_attention",
                    "block_table must be a contiguous [sequences, max_blocks] int64 tensor on cuda:0");
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, blocks, on_gpu(table), ints({0}), len, 1.0),
                    "paged_decode_attention", "must be on the cache's device");
  EXPECT_KILN_ERROR((void)paged_decode_attention(on_gpu(zeros<float>({1, 3, 2, 6})), blocks, blocks, on_gpu(table), one,
                                                 len, 1.0),
                    "paged_decode_attention", "takes 1 or 2 query tokens");
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, blocks, on_gpu(table), one, len, 1.0, 129),
                    "paged_decode_attention", "splits must be in [0, 128]");
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, blocks, on_gpu(zeros<std::int64_t>({2, 0})), one, len, 1.0),
                    "paged_decode_attention", "needs 1 .. 2^30 / block_tokens blocks per sequence");
  EXPECT_KILN_ERROR(paged_cache_write(blocks, on_gpu(table), one, one, on_gpu(zeros<float>({1, 2, 1, 5}))),
                    "paged_cache_write", "do not fit");
  EXPECT_KILN_ERROR(paged_cache_write(blocks, on_gpu(table), one, ints({0}), on_gpu(zeros<float>({1, 2, 1, 6}))),
                    "paged_cache_write", "must be on the cache's device");
}

}  // namespace
