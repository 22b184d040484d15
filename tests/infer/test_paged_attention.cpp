// The paged KV cache: the block allocator (infer/block_allocator.hpp) against its invariants under
// random operation sequences, and the paged ops (ops/paged_attention.hpp) against independent
// references — the contiguous cache's decode_attention on the same rows (same double accumulation
// in the same order, so equal bit for bit), and the softmax written out here in double — at lengths
// 1, 63, 64, 65 and 1000 on scattered blocks, ragged batches, two query tokens, an MLA-style cache
// whose values are a view of its keys, and sequences that share their prompt's blocks and write
// past them through copy-on-write.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include <kiln/infer/block_allocator.hpp>
#include <kiln/ops/paged_attention.hpp>

#include "test_util.hpp"

using namespace kiln;
using infer::BlockAllocator;
using infer::BlockCopy;

namespace {

// Every block free or owned; an owned block's count = the lists holding it; lists cover lengths.
void check_invariants(const BlockAllocator& a) {
  std::vector<std::int64_t> seen(static_cast<std::size_t>(a.num_blocks()), 0);
  for (std::int64_t s = 0; s < a.num_sequences(); ++s) {
    EXPECT_EQ(static_cast<std::int64_t>(a.blocks(s).size()), a.blocks_for(a.length(s))) << "sequence " << s;
    for (std::int64_t b : a.blocks(s)) ++seen[static_cast<std::size_t>(b)];
  }
  std::int64_t owned = 0;
  for (std::int64_t b = 0; b < a.num_blocks(); ++b) {
    EXPECT_EQ(a.references(b), seen[static_cast<std::size_t>(b)]) << "block " << b;
    owned += seen[static_cast<std::size_t>(b)] > 0 ? 1 : 0;
  }
  EXPECT_EQ(owned + a.free_blocks(), a.num_blocks());
}

TEST(BlockAllocator, GrowsShareCopiesOnWriteAndFrees) {
  BlockAllocator a(8, 4, 3, 5);
  a.reserve(0, 6);  // blocks 0, 1
  EXPECT_EQ(a.blocks(0), (std::vector<std::int64_t>{0, 1}));
  a.reserve(0, 3);  // never shrinks
  EXPECT_EQ(a.length(0), 6);
  a.fork(0, 1);
  a.fork(0, 2);
  EXPECT_EQ(a.references(0), 3);
  EXPECT_EQ(a.references(1), 3);
  check_invariants(a);

  // Sequence 1 writes position 6 (block 1, shared, rows 4..5 already written): a private copy.
  const BlockCopy c = a.prepare_write(1, 6);
  EXPECT_EQ(c.from, 1);
  EXPECT_EQ(c.to, 2);  // lowest free
  EXPECT_EQ(c.rows, 2);
  EXPECT_EQ(a.blocks(1), (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(a.references(1), 2);
  EXPECT_EQ(a.prepare_write(1, 7).rows, 0) << "already private";
  EXPECT_EQ(a.prepare_write(1, 7).to, -1);
  a.reserve(1, 9);  // a third block, private
  EXPECT_EQ(a.blocks(1), (std::vector<std::int64_t>{0, 2, 3}));
  check_invariants(a);

  // Writing at a block's start copies nothing but still makes the block private.
  a.reserve(2, 8);
  const BlockCopy d = a.prepare_write(2, 4);
  EXPECT_EQ(d.rows, 0);
  EXPECT_EQ(d.from, 1);
  EXPECT_EQ(a.references(1), 1);
  check_invariants(a);

  const std::int64_t free_before = a.free_blocks();
  a.release(0);  // block 0 stays with 1 and 2; block 1 had only 0 left
  EXPECT_EQ(a.free_blocks(), free_before + 1);
  EXPECT_EQ(a.references(0), 2);
  a.release(1);
  a.release(2);
  EXPECT_EQ(a.free_blocks(), 8);
  check_invariants(a);
}

TEST(BlockAllocator, ErrorsChangeNothing) {
  BlockAllocator a(3, 4, 2, 2);
  a.reserve(0, 8);
  EXPECT_KILN_ERROR(a.reserve(1, 8), "BlockAllocator::reserve", "out of blocks: sequence 1 needs 2 more for 8 tokens",
                    "1 of 3 are free");
  EXPECT_TRUE(a.blocks(1).empty());
  EXPECT_EQ(a.free_blocks(), 1);
  EXPECT_KILN_ERROR(a.reserve(0, 9), "BlockAllocator::reserve", "needs 3 blocks for 9 tokens",
                    "block table's 2 per sequence");
  a.fork(0, 1);
  a.reserve(1, 8);
  (void)a.prepare_write(1, 5);  // takes the last free block
  EXPECT_KILN_ERROR((void)a.prepare_write(1, 2), "BlockAllocator::prepare_write", "out of blocks",
                    "must copy its shared block 0");
  EXPECT_KILN_ERROR((void)a.prepare_write(1, 8), "BlockAllocator::prepare_write", "position 8 of sequence 1",
                    "outside its 2 blocks");
  EXPECT_KILN_ERROR(a.fork(0, 1), "BlockAllocator::fork", "sequence 1 still holds 2 blocks");
  EXPECT_KILN_ERROR(a.fork(0, 0), "BlockAllocator::fork", "cannot fork itself");
  EXPECT_KILN_ERROR((void)a.length(2), "BlockAllocator", "sequence 2 is outside [0, 2)");
  EXPECT_KILN_ERROR(BlockAllocator(0, 4, 1, 1), "BlockAllocator", "must be positive");
  check_invariants(a);
}

// Random reserve / fork / write / truncate / release sequences keep the invariants, and every write lands in a
// block its sequence owns alone.
TEST(BlockAllocator, RandomOperationsKeepTheInvariants) {
  std::mt19937_64 rng(7);
  BlockAllocator a(40, 4, 6, 12);
  int forks = 0, copies = 0, refusals = 0, truncations = 0;
  for (int step = 0; step < 3000; ++step) {
    const std::int64_t s = static_cast<std::int64_t>(rng() % 6);
    const int kind = static_cast<int>(rng() % 10);
    try {
      if (kind < 4) {
        a.reserve(s, a.length(s) + static_cast<std::int64_t>(rng() % 7));
      } else if (kind < 5) {
        const std::int64_t child = static_cast<std::int64_t>(rng() % 6);
        if (child != s && a.blocks(child).empty() && !a.blocks(s).empty()) a.fork(s, child), ++forks;
      } else if (kind < 8) {
        if (a.length(s) > 0) {
          const std::int64_t p = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(a.length(s)));
          copies += a.prepare_write(s, p).rows > 0 ? 1 : 0;
          EXPECT_EQ(a.references(a.blocks(s)[static_cast<std::size_t>(p / 4)]), 1);
        }
      } else if (kind < 9) {
        const std::int64_t keep = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(a.length(s) + 1));
        truncations += a.blocks_for(keep) < static_cast<std::int64_t>(a.blocks(s).size()) ? 1 : 0;
        a.truncate(s, keep);
        EXPECT_EQ(a.length(s), keep);
      } else {
        a.release(s);
      }
    } catch (const Error& e) {
      ++refusals;
      const std::string what = e.what();  // the pool or the table is full: the two refusals
      EXPECT_TRUE(what.find("out of blocks") != std::string::npos || what.find("block table's") != std::string::npos)
          << what;
    }
    check_invariants(a);
    if (HasFailure()) break;
  }
  // The run went through every path (seed 7: dozens of forks and copies, a few refusals).
  EXPECT_GT(forks, 20);
  EXPECT_GT(copies, 10);
  EXPECT_GT(refusals, 0);
  EXPECT_GT(truncations, 10);
}

// ---- the paged ops ----

// A paged cache and a contiguous one holding the same rows, filled through the two write ops in
// chunks, with each sequence's blocks scattered over the pool.
template <class T>
struct TwinCaches {
  Tensor<T> blocks, contiguous;  // [num_blocks, bt, kv_heads, d], [slots, capacity, kv_heads, d]
  Tensor<std::int64_t> table;    // [slots, max_blocks]
};

template <class T>
TwinCaches<T> twin_caches(const std::vector<std::int64_t>& lengths, std::int64_t bt, std::int64_t kv_heads,
                          std::int64_t d, std::uint64_t seed) {
  const auto slots = static_cast<std::int64_t>(lengths.size());
  const std::int64_t capacity = *std::max_element(lengths.begin(), lengths.end());
  const std::int64_t max_blocks = (capacity + bt - 1) / bt;
  std::int64_t needed = 0;
  for (auto L : lengths) needed += (L + bt - 1) / bt;
  const std::int64_t num_blocks = needed + 3;  // a few never used
  std::vector<std::int64_t> ids(static_cast<std::size_t>(num_blocks));
  for (std::int64_t i = 0; i < num_blocks; ++i) ids[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::int64_t> table(static_cast<std::size_t>(slots * max_blocks), -1);
  std::size_t next = 0;
  for (std::int64_t s = 0; s < slots; ++s)
    for (std::int64_t b = 0; b * bt < lengths[static_cast<std::size_t>(s)]; ++b)
      table[static_cast<std::size_t>(s * max_blocks + b)] = ids[next++];
  TwinCaches<T> c{full<T>({num_blocks, bt, kv_heads, d}, convert<T>(std::nan(""))), zeros<T>({slots, capacity, kv_heads, d}),
                  Tensor<std::int64_t>::from_vector(table, {slots, max_blocks})};
  Generator gen{seed, 0};
  for (std::int64_t s = 0; s < slots; ++s) {
    const std::int64_t L = lengths[static_cast<std::size_t>(s)];
    const Tensor<T> rows = randn<T>({1, L, kv_heads, d}, 0.0, 1.0, Device::cpu(), gen);
    const auto slot = Tensor<std::int64_t>::from_vector({s}, {1});
    // In chunks of up to 50 rows: writes that start and end inside blocks.
    for (std::int64_t p = 0; p < L; p += 50) {
      const std::int64_t n = std::min<std::int64_t>(50, L - p);
      const auto pos = Tensor<std::int64_t>::from_vector({p}, {1});
      paged_cache_write(c.blocks, c.table, slot, pos, narrow(rows, 1, p, n));
      cache_write(c.contiguous, slot, pos, narrow(rows, 1, p, n));
    }
  }
  return c;
}

// The softmax written out in double for one query row over rows [L, kv_heads, d] of k (and v = its
// first dv columns), kv head kvh.
std::vector<double> attend_by_hand(const std::vector<double>& q, const Tensor<double>& k, std::int64_t L,
                                   std::int64_t kvh, std::int64_t dv, double scale) {
  const std::int64_t kv_heads = k.size(1), d = k.size(2);
  std::vector<double> s(static_cast<std::size_t>(L)), out(static_cast<std::size_t>(dv), 0.0);
  double m = -INFINITY, total = 0.0;
  for (std::int64_t j = 0; j < L; ++j) {
    double dot = 0.0;
    for (std::int64_t x = 0; x < d; ++x) dot += q[static_cast<std::size_t>(x)] * k.data()[(j * kv_heads + kvh) * d + x];
    s[static_cast<std::size_t>(j)] = dot * scale;
    m = std::max(m, dot * scale);
  }
  for (auto& x : s) total += (x = std::exp(x - m));
  for (std::int64_t j = 0; j < L; ++j)
    for (std::int64_t x = 0; x < dv; ++x)
      out[static_cast<std::size_t>(x)] += s[static_cast<std::size_t>(j)] / total * k.data()[(j * kv_heads + kvh) * d + x];
  return out;
}

template <class T>
void check_against_contiguous(const std::vector<std::int64_t>& lengths, std::int64_t bt, std::int64_t heads,
                              std::int64_t kv_heads, std::int64_t dk, std::int64_t dv) {
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " bt " << bt << " heads " << heads << "/" << kv_heads
                                    << " dk " << dk << " dv " << dv);
  const TwinCaches<T> c = twin_caches<T>(lengths, bt, kv_heads, dk, 11);
  // Values: the first dv columns of the keys (MLA's layout), a strided view in both caches.
  const Tensor<T> v_blocks = narrow(c.blocks, 3, 0, dv), v_cont = narrow(c.contiguous, 3, 0, dv);
  const auto count = static_cast<std::int64_t>(lengths.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(count));
  for (std::int64_t a = 0; a < count; ++a) order[static_cast<std::size_t>(a)] = count - 1 - a;  // rows not in slot order
  std::vector<std::int64_t> len;
  for (auto s : order) len.push_back(lengths[static_cast<std::size_t>(s)]);
  const auto slots = Tensor<std::int64_t>::from_vector(order, {count});
  const auto L = Tensor<std::int64_t>::from_vector(len, {count});
  Generator gen{3, 0};
  const Tensor<T> q = randn<T>({count, 1, heads, dk}, 0.0, 1.0, Device::cpu(), gen);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  const Tensor<T> paged = paged_decode_attention(q, c.blocks, v_blocks, c.table, slots, L, scale);
  const Tensor<T> cont = decode_attention(reshape(q, {count, heads, dk}), c.contiguous, v_cont, slots, L, scale);
  ASSERT_EQ(paged.shape(), (Shape{count, 1, heads, dv}));
  EXPECT_EQ(paged.to_vector(), cont.to_vector()) << "same accumulation in the same order: equal bits";

  // Two query tokens (rows of at least 2 tokens): query 0 sees one token less than query 1, which
  // sees them all.
  if (*std::min_element(len.begin(), len.end()) >= 2) {
    const Tensor<T> q2 = randn<T>({count, 2, heads, dk}, 0.0, 1.0, Device::cpu(), gen);
    const Tensor<T> two = paged_decode_attention(q2, c.blocks, v_blocks, c.table, slots, L, scale);
    std::vector<std::int64_t> shorter;
    for (auto l : len) shorter.push_back(l - 1);
    const Tensor<T> first = paged_decode_attention(narrow(q2, 1, 0, 1), c.blocks, v_blocks, c.table, slots,
                                                   Tensor<std::int64_t>::from_vector(shorter, {count}), scale);
    const Tensor<T> second = paged_decode_attention(narrow(q2, 1, 1, 1), c.blocks, v_blocks, c.table, slots, L, scale);
    EXPECT_EQ(narrow(two, 1, 0, 1).to_vector(), first.to_vector()) << "query 0 of 2";
    EXPECT_EQ(narrow(two, 1, 1, 1).to_vector(), second.to_vector()) << "query 1 of 2";
  }

  // One row by hand in double (an independent formula, not the shared loop).
  if constexpr (std::is_same_v<T, double>) {
    const std::int64_t a = 0, s = order[0], G = heads / kv_heads;
    const Tensor<double> rows = contiguous(narrow(narrow(c.contiguous, 0, s, 1), 1, 0, len[0]));
    for (std::int64_t h = 0; h < heads; ++h) {
      std::vector<double> qh(static_cast<std::size_t>(dk));
      for (std::int64_t x = 0; x < dk; ++x) qh[static_cast<std::size_t>(x)] = q.data()[(a * heads + h) * dk + x];
      const std::vector<double> want = attend_by_hand(qh, reshape(rows, {len[0], kv_heads, dk}), len[0], h / G, dv, scale);
      for (std::int64_t x = 0; x < dv; ++x)
        EXPECT_NEAR(paged.data()[(a * heads + h) * dv + x], want[static_cast<std::size_t>(x)], 1e-12) << "head " << h;
    }
  }
}

TEST(PagedDecodeAttention, EqualsTheContiguousCacheAtOddLengths) {
  check_against_contiguous<double>({1, 63, 64, 65, 1000}, 64, 4, 1, 24, 16);  // MLA: one kv head, v in k
  check_against_contiguous<double>({5, 130, 2, 64}, 64, 6, 3, 8, 8);           // grouped kv heads, two queries
  check_against_contiguous<double>({2, 63, 64, 65, 1000}, 64, 4, 1, 24, 16);  // two queries at the block edges
  check_against_contiguous<double>({9, 17, 3}, 4, 2, 2, 5, 3);                 // tiny blocks, many of them
  check_against_contiguous<float>({1, 63, 64, 65, 1000}, 64, 4, 1, 24, 16);
  check_against_contiguous<bf16>({65, 200, 7}, 64, 8, 1, 40, 32);
}

// Sequences sharing a prompt's blocks: each forks the prompt, makes its block private before
// writing (copying the rows already there), and writes its own continuation. Each must see the
// prompt plus only its own tokens, as a contiguous cache built for it alone does; the prompt's
// full blocks stay shared.
TEST(PagedDecodeAttention, ForkedSequencesShareThePromptAndSeeOnlyTheirOwnTokens) {
  const std::int64_t bt = 64, dk = 12, dv = 8, P = 150, G = 4, extra = 60;  // 150 + 60: 4 blocks a sample
  BlockAllocator alloc(32, bt, G + 1, 4);
  Tensor<double> blocks = zeros<double>({32, bt, 1, dk});
  Generator gen{5, 0};
  const Tensor<double> prompt = randn<double>({1, P, 1, dk}, 0.0, 1.0, Device::cpu(), gen);
  alloc.reserve(0, P);
  auto upload = [&] { return Tensor<std::int64_t>::from_vector(alloc.table(), {G + 1, 4}); };
  paged_cache_write(blocks, upload(), Tensor<std::int64_t>::from_vector({0}, {1}),
                    Tensor<std::int64_t>::from_vector({0}, {1}), prompt);
  std::vector<Tensor<double>> own;
  for (std::int64_t g = 1; g <= G; ++g) {
    alloc.fork(0, g);
    alloc.reserve(g, P + extra);
    for (std::int64_t p = P; p < P + extra; ++p) {
      const BlockCopy c = alloc.prepare_write(g, p);
      copy_block_rows(blocks, c.from, c.to, c.rows);
    }
    own.push_back(randn<double>({1, extra, 1, dk}, 0.0, 1.0, Device::cpu(), gen));
    paged_cache_write(blocks, upload(), Tensor<std::int64_t>::from_vector({g}, {1}),
                      Tensor<std::int64_t>::from_vector({P}, {1}), own.back());
  }
  alloc.release(0);  // the prompt's sequence is done; its blocks live on in the samples
  check_invariants(alloc);
  EXPECT_EQ(alloc.references(alloc.blocks(1)[0]), G) << "the prompt's full blocks stay shared";
  EXPECT_EQ(alloc.references(alloc.blocks(1)[1]), G);
  EXPECT_EQ(alloc.num_blocks() - alloc.free_blocks(), 2 + 2 * G) << "2 shared + per sample its copied block and one more";

  const Tensor<std::int64_t> table = upload();
  const Tensor<double> q = randn<double>({G, 1, 3, dk}, 0.0, 1.0, Device::cpu(), gen);
  std::vector<std::int64_t> slots, lengths;
  for (std::int64_t g = 1; g <= G; ++g) slots.push_back(g), lengths.push_back(P + extra);
  const Tensor<double> got = paged_decode_attention(q, blocks, narrow(blocks, 3, 0, dv), table,
                                                    Tensor<std::int64_t>::from_vector(slots, {G}),
                                                    Tensor<std::int64_t>::from_vector(lengths, {G}), 0.3);
  for (std::int64_t g = 0; g < G; ++g) {
    Tensor<double> alone = zeros<double>({1, P + extra, 1, dk});
    const auto zero = Tensor<std::int64_t>::from_vector({0}, {1});
    cache_write(alone, zero, zero, prompt);
    cache_write(alone, zero, Tensor<std::int64_t>::from_vector({P}, {1}), own[static_cast<std::size_t>(g)]);
    const Tensor<double> want = decode_attention(reshape(narrow(q, 0, g, 1), {1, 3, dk}), alone,
                                                 narrow(alone, 3, 0, dv), zero,
                                                 Tensor<std::int64_t>::from_vector({P + extra}, {1}), 0.3);
    EXPECT_EQ(narrow(got, 0, g, 1).to_vector(), want.to_vector()) << "sample " << g;
  }
}

TEST(PagedDecodeAttention, Errors) {
  const Tensor<double> blocks = zeros<double>({4, 8, 1, 6});
  const Tensor<double> v = narrow(blocks, 3, 0, 4);
  const auto table = Tensor<std::int64_t>::from_vector({0, 1, 3, 2, -1, -1}, {2, 3});
  const Tensor<double> q = zeros<double>({1, 1, 2, 6});
  auto one = [](std::int64_t x) { return Tensor<std::int64_t>::from_vector({x}, {1}); };
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, v, table, one(1), one(9), 1.0), "paged_decode_attention",
                    "sequence 1's block 1 (position 8) is -1");
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, v, table, one(0), one(25), 1.0), "paged_decode_attention",
                    "position 24 of sequence 0 needs block 3 of a table of 3");
  EXPECT_KILN_ERROR((void)paged_decode_attention(q, blocks, v, table, one(2), one(1), 1.0), "paged_decode_attention",
                    "slot 2 of batch row 0 is outside the table's 2 sequences");
  EXPECT_KILN_ERROR((void)paged_decode_attention(zeros<double>({1, 2, 2, 6}), blocks, v, table, one(0), one(1), 1.0),
                    "paged_decode_attention", "length 1 of batch row 0 must be at least the 2 query token(s)");
  EXPECT_KILN_ERROR((void)paged_decode_attention(zeros<double>({1, 3, 2, 6}), blocks, v, table, one(0), one(5), 1.0),
                    "paged_decode_attention", "takes 1 or 2 query tokens");
  EXPECT_KILN_ERROR((void)paged_decode_attention(zeros<double>({1, 1, 2, 5}), blocks, v, table, one(0), one(5), 1.0),
                    "paged_decode_attention", "do not fit");
  EXPECT_KILN_ERROR(paged_cache_write(blocks, table, one(1), one(7), zeros<double>({1, 2, 1, 6})), "paged_cache_write",
                    "sequence 1's block 1 (position 8) is -1");
  EXPECT_KILN_ERROR(copy_block_rows(blocks, 0, 0, 3), "copy_block_rows", "does not fit");
  EXPECT_KILN_ERROR(copy_block_rows(blocks, 0, 1, 9), "copy_block_rows", "does not fit");
}

}  // namespace
