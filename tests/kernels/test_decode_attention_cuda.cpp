// The KV-cache kernels on CUDA (kernels/decode_attention/) against the CPU ops: decode_attention
// for grouped-query heads, MLA's latent (v a narrowed view of k), more heads than one block's
// chunk, value dims from 7 to 512, lengths 1 .. capacity across many key tiles (DeepSeek-V3's
// MLA sizes at 600 positions), float / bf16 / double; out-of-range slots give zeros;
// cache_write bit-exact, with out-of-range rows skipped.
#include <kiln/ops/decode_attention.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

struct Case {
  std::int64_t slots, capacity, kv_heads, heads, dk, dv;
  bool latent;  // v = narrow(k, dv): MLA
};

template <class T>
void check_case(const Case& c, double tolerance) {
  SCOPED_TRACE(::testing::Message() << "heads " << c.heads << "/" << c.kv_heads << " dk " << c.dk << " dv " << c.dv
                                    << " capacity " << c.capacity << " " << dtype_name<T>);
  const auto k = randn<T>({c.slots, c.capacity, c.kv_heads, c.dk});
  const auto v_full = randn<T>({c.slots, c.capacity, c.kv_heads, c.dv});
  std::vector<std::int64_t> sl, len;
  for (std::int64_t a = 0; a < 2 * c.slots + 1; ++a) {
    sl.push_back((a * 7 + 3) % c.slots);
    len.push_back(1 + (a * 13) % c.capacity);
  }
  len.back() = c.capacity;
  const std::int64_t n = static_cast<std::int64_t>(sl.size());
  const auto q = randn<T>({n, c.heads, c.dk});
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  auto pick_v = [&](const Tensor<T>& kk, const Tensor<T>& vv) { return c.latent ? narrow(kk, 3, 0, c.dv) : vv; };
  const auto want = decode_attention(q, k, pick_v(k, v_full), ints(sl), ints(len), scale);
  poison_cached_memory();
  const auto kg = on_gpu(k);
  const auto got = decode_attention(on_gpu(q), kg, pick_v(kg, on_gpu(v_full)), on_gpu(ints(sl)), on_gpu(ints(len)), scale);
  EXPECT_LT(relative_error(on_cpu(got), want), tolerance);
}

TEST(DecodeAttentionCuda, MatchesTheCpuOp) {
  KILN_REQUIRE_GPU();
  manual_seed(51);
  // The CUDA-core kernel (automatic would run the tensor-core one at the two MLA sizes in bf16; it
  // has its own test, tests/kernels/test_paged_attention_cuda.cpp).
  const DecodeKernelScope cuda_cores(kernels::DecodeKernel::simt);
  const std::vector<Case> cases = {
      {5, 70, 1, 12, 288, 256, true},   // kiln's big MLA config: latent 256 + rope 32, 12 heads
      {3, 40, 1, 40, 72, 64, true},     // 40 heads: three chunks, the last partial
      {4, 33, 4, 8, 64, 64, false},     // GQA, groups of 2
      {3, 9, 3, 3, 13, 7, false},       // odd sizes, one head per kv head
      {2, 65, 2, 6, 40, 300, false},    // dv > 256: four columns a thread
      {2, 1, 1, 4, 16, 16, false},      // capacity 1
      {2, 600, 1, 16, 576, 512, true},  // DeepSeek-V3's MLA sizes, rows long enough for every warp to take several tiles
  };
  for (const Case& c : cases) {
    check_case<float>(c, 2e-6);
    check_case<double>(c, 1e-12);
    // bf16: both devices accumulate exactly-widened inputs in float/double and round the output
    // once: they differ by output rounding (2^-8 relative at most per element).
    check_case<bf16>(c, 4e-3);
  }
}

TEST(DecodeAttentionCuda, OutOfRangeRowsGiveZeros) {
  KILN_REQUIRE_GPU();
  const auto k = on_gpu(randn<float>({2, 4, 1, 8}));
  const auto q = on_gpu(randn<float>({3, 2, 8}));
  const auto out = on_cpu(decode_attention(q, k, k, on_gpu(ints({5, -1, 1})), on_gpu(ints({2, 2, 0})), 1.0)).to_vector();
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(CacheWriteCuda, BitExactAndSkipsOutOfRangeRows) {
  KILN_REQUIRE_GPU();
  manual_seed(52);
  for (std::int64_t row : {std::int64_t{576}, std::int64_t{7}}) {  // 16-byte words, and elements
    const auto base = randn<bf16>({4, 10, row});
    const auto values = randn<bf16>({3, 2, row});
    auto cpu = clone(base);
    cache_write(cpu, ints({3, 0, 2}), ints({0, 8, 4}), values);
    auto gpu = on_gpu(base);
    cache_write(gpu, on_gpu(ints({3, 0, 2})), on_gpu(ints({0, 8, 4})), on_gpu(values));
    EXPECT_EQ(relative_error(on_cpu(gpu), cpu), 0.0);
    // Rows outside the cache (slot 4, position 9 + 2 steps, slot -1) are dropped, the others kept.
    auto g2 = on_gpu(base);
    cache_write(g2, on_gpu(ints({4, 1, -1})), on_gpu(ints({0, 9, 0})), on_gpu(values));
    auto expect = clone(base);
    cache_write(expect, ints({1}), ints({9}), narrow(narrow(values, 0, 1, 1), 1, 0, 1));
    EXPECT_EQ(relative_error(on_cpu(g2), expect), 0.0);
  }
}

}  // namespace
