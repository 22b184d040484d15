// The KV-cache ops on the CPU (ops/decode_attention.hpp): decode_attention against attention
// composed from kiln ops (matmul, softmax) over each row's slot, in double; grouped-query heads,
// MLA's shared latent (v a narrowed view of k), odd sizes, lengths 1 and capacity; cache_write
// placement; and bad input.
#include <kiln/ops/decode_attention.hpp>

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

template <class T>
Tensor<T> pick(const Tensor<T>& t, std::int64_t i) {
  return squeeze(narrow(t, 0, i, 1), 0);
}

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

// Row a attends to k_cache[slot, 0:L] through plain ops: [kv_heads, G, dk] x [kv_heads, L, dk]^T.
template <class T>
Tensor<T> composed(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const std::vector<std::int64_t>& slots,
                   const std::vector<std::int64_t>& lengths, double scale) {
  const std::int64_t n = q.size(0), heads = q.size(1), dk = q.size(2), kvh = k.size(2), dv = v.size(3);
  std::vector<Tensor<T>> rows;
  for (std::int64_t a = 0; a < n; ++a) {
    const std::int64_t L = lengths[static_cast<std::size_t>(a)], s = slots[static_cast<std::size_t>(a)];
    const Tensor<T> K = transpose(narrow(pick(k, s), 0, 0, L), 0, 1);  // [kvh, L, dk]
    const Tensor<T> V = transpose(narrow(pick(v, s), 0, 0, L), 0, 1);  // [kvh, L, dv]
    const Tensor<T> Q = reshape(pick(q, a), {kvh, heads / kvh, dk});
    const Tensor<T> P = softmax(mul(matmul(Q, transpose(K, 1, 2)), scale), -1);
    rows.push_back(reshape(matmul(P, V), {1, heads, dv}));
  }
  return cat(rows, 0);
}

TEST(DecodeAttention, GroupedQueryHeadsMatchComposedAttention) {
  manual_seed(21);
  const std::int64_t slots = 5, capacity = 11, kvh = 3, heads = 6, dk = 13, dv = 7;
  const auto k = randn<double>({slots, capacity, kvh, dk});
  const auto v = randn<double>({slots, capacity, kvh, dv});
  const std::vector<std::int64_t> sl = {4, 0, 2, 2}, len = {1, 11, 6, 3};
  const auto q = randn<double>({4, heads, dk});
  const auto out = decode_attention(q, k, v, ints(sl), ints(len), 0.37);
  EXPECT_EQ(out.shape(), (Shape{4, heads, dv}));
  EXPECT_LT(relative_error(out, composed(q, k, v, sl, len, 0.37)), 1e-13);
}

TEST(DecodeAttention, MlaLatentIsANarrowedViewOfTheKeys) {
  // kv_heads = 1, keys [latent r | rope dr], values = the latent: one cache tensor.
  manual_seed(22);
  const std::int64_t r = 9, dr = 4, heads = 5;
  const auto cache = randn<double>({3, 8, r + dr});
  const auto k = unsqueeze(cache, 2);
  const auto v = narrow(k, 3, 0, r);
  const std::vector<std::int64_t> sl = {1, 2, 0}, len = {8, 2, 5};
  const auto q = randn<double>({3, heads, r + dr});
  EXPECT_LT(relative_error(decode_attention(q, k, v, ints(sl), ints(len), 0.2), composed(q, k, v, sl, len, 0.2)),
            1e-13);
}

TEST(DecodeAttention, FloatAndBf16) {
  manual_seed(23);
  const auto k = randn<double>({4, 33, 2, 64});
  const auto v = randn<double>({4, 33, 2, 32});
  const auto q = randn<double>({3, 8, 64});
  const std::vector<std::int64_t> sl = {3, 1, 0}, len = {33, 17, 32};
  const auto ref = composed(q, k, v, sl, len, 0.125);
  // float: sums of 64 products accumulated in double, rounded once: well under 1e-6.
  EXPECT_LT(relative_error(decode_attention(cast<float>(q), cast<float>(k), cast<float>(v), ints(sl), ints(len), 0.125),
                           ref),
            1e-6);
  // bf16 inputs (rounded, 2^-9 relative each) and a rounded output: about 1e-2 at most.
  const auto qb = cast<bf16>(q), kb = cast<bf16>(k), vb = cast<bf16>(v);
  EXPECT_LT(relative_error(decode_attention(qb, kb, vb, ints(sl), ints(len), 0.125),
                           composed(cast<double>(qb), cast<double>(kb), cast<double>(vb), sl, len, 0.125)),
            4e-3);
}

TEST(CacheWrite, PlacesRowsAtTheirSlotsAndPositions) {
  auto cache = zeros<float>({3, 6, 2, 2});
  const auto values = reshape(arange<float>(1.0, 1.0 + 2 * 3 * 4), {2, 3, 2, 2});
  cache_write(cache, ints({2, 0}), ints({1, 3}), values);
  const auto c = cache.to_vector();
  auto at = [&](std::int64_t s, std::int64_t p, std::int64_t e) { return c[static_cast<std::size_t>((s * 6 + p) * 4 + e)]; };
  for (std::int64_t step = 0; step < 3; ++step)
    for (std::int64_t e = 0; e < 4; ++e) {
      EXPECT_EQ(at(2, 1 + step, e), 1.0f + static_cast<float>((0 * 3 + step) * 4 + e));
      EXPECT_EQ(at(0, 3 + step, e), 1.0f + static_cast<float>((1 * 3 + step) * 4 + e));
    }
  double total = 0.0;
  for (float x : c) total += x;
  EXPECT_EQ(total, 24.0 * 25.0 / 2.0);  // nothing else written
}

TEST(DecodeAttention, BadInput) {
  const auto k = zeros<float>({2, 4, 1, 8});
  const auto v = zeros<float>({2, 4, 1, 8});
  const auto q = zeros<float>({1, 2, 8});
  EXPECT_KILN_ERROR(decode_attention(q, k, v, ints({2}), ints({1}), 1.0), "decode_attention", "slot 2");
  EXPECT_KILN_ERROR(decode_attention(q, k, v, ints({0}), ints({5}), 1.0), "length 5", "capacity = 4");
  EXPECT_KILN_ERROR(decode_attention(q, k, v, ints({0}), ints({0}), 1.0), "length 0");
  EXPECT_KILN_ERROR(decode_attention(q, k, v, ints({0, 1}), ints({1}), 1.0), "slots", "[1]");
  EXPECT_KILN_ERROR(decode_attention(zeros<float>({1, 3, 8}), zeros<float>({2, 4, 2, 8}), zeros<float>({2, 4, 2, 8}),
                                     ints({0}), ints({1}), 1.0),
                    "kv_heads");
  EXPECT_KILN_ERROR(decode_attention(q, transpose(k, 2, 3), v, ints({0}), ints({1}), 1.0), "do not fit");
  auto cache = zeros<float>({2, 4, 3});
  EXPECT_KILN_ERROR(cache_write(cache, ints({0}), ints({2}), zeros<float>({1, 3, 3})), "cache_write", "capacity 4");
  EXPECT_KILN_ERROR(cache_write(cache, ints({-1}), ints({0}), zeros<float>({1, 1, 3})), "slot -1");
  EXPECT_KILN_ERROR(cache_write(cache, ints({0}), ints({0}), zeros<float>({1, 1, 4})), "do not fit");
  EXPECT_KILN_ERROR(cache_write(transpose(cache, 0, 1), ints({0}), ints({0}), zeros<float>({1, 1, 3})), "contiguous");
}

}  // namespace
