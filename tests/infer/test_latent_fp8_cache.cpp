// The FP8 latent cache (ops/latent_fp8_cache.hpp, infer/kv_cache.hpp's CacheFormat::fp8):
//  - the write quantizes each token's latent exactly as fp8::quantize does (bytes and scales bit
//    for bit, the rope part copied), in both layouts, touching no other row;
//  - decode attention over it equals the bf16-cache op (paged_decode_attention, itself tested
//    against a softmax written out in double) run in double over the cache dequantized — at
//    lengths 1, 63, 64, 65 and 1000, ragged batches, 1 and 2 query tokens, sequences sharing their
//    first blocks, shuffled block tables, a latent of 200 (a partial 128-tile) and of 256; double,
//    float and bf16 queries. The latent tiles' magnitudes span 10^-3 .. 10^3, so a scale applied
//    to the wrong tile or token is off by orders of magnitude;
//  - through the engine: generation with fp8_cache gives the same tokens in every layout, with
//    and without speculative decoding (the same function, other addressing and step shapes), and
//    each drawn token's logits are the uncached forward's within FP8's error (and not equal: the
//    cache is really quantized); its bytes are r + 4·ceil(r/128) + dr·sizeof(T) a token;
//  - errors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <kiln/infer/engine.hpp>
#include <kiln/ops/latent_fp8_cache.hpp>
#include <numeric>
#include <random>
#include <vector>

#include "infer_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// values [count, steps, 1, r + dr]: each 128-column tile of a token's latent scaled by its own
// 10^U(-3, 3), the rope part normal.
template <class T>
Tensor<T> latent_rows(std::int64_t count, std::int64_t steps, std::int64_t r, std::int64_t dr, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> exponent(-3.0, 3.0);
  std::vector<T> v;
  for (std::int64_t t = 0; t < count * steps; ++t) {
    double tile_scale = 1.0;
    for (std::int64_t d = 0; d < r; ++d) {
      if (d % 128 == 0) tile_scale = std::pow(10.0, exponent(rng));
      v.push_back(convert<T>(normal(rng) * tile_scale));
    }
    for (std::int64_t d = 0; d < dr; ++d) v.push_back(convert<T>(normal(rng)));
  }
  return Tensor<T>::from_vector(v, {count, steps, 1, r + dr});
}

// A block table [sequences, max_blocks] over `num_blocks` blocks: sequence s's blocks in a
// shuffled order; the first `shared` blocks of every sequence are sequence 0's (a shared prompt).
std::vector<std::int64_t> shuffled_table(std::int64_t sequences, std::int64_t max_blocks, std::int64_t num_blocks,
                                         std::int64_t shared, std::uint64_t seed) {
  std::vector<std::int64_t> pool(static_cast<std::size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937_64(seed));
  std::vector<std::int64_t> table;
  std::size_t next = 0;
  for (std::int64_t s = 0; s < sequences; ++s)
    for (std::int64_t b = 0; b < max_blocks; ++b)
      table.push_back(s > 0 && b < shared ? table[static_cast<std::size_t>(b)] : pool.at(next++));
  return table;
}

Tensor<std::int64_t> index(const std::vector<std::int64_t>& v) { return tensor(v); }

}  // namespace

// Each written token's latent bytes and scales are fp8::quantize's of that row (a 1x128 tile per
// 128 columns, the last one partial at r = 200), its rope part is copied, nothing else changes.
TEST(LatentFp8Cache, WriteQuantizesEachTokenLikeFp8Quantize) {
  const std::int64_t r = 200, dr = 8, nb = 2;
  for (const bool paged : {false, true}) {
    SCOPED_TRACE(paged ? "paged" : "contiguous");
    // 3 sequences of capacity 12: contiguous [3, 12, ...]; paged 9 blocks of 4 rows, tables shuffled.
    const std::int64_t outer = paged ? 9 : 3, rows = paged ? 4 : 12;
    const auto cache = Fp8LatentCache<float>::zeros(outer, rows, r, dr, Device::cpu());
    Tensor<std::int64_t> table;
    std::vector<std::int64_t> t;
    if (paged) {
      t = shuffled_table(3, 3, 9, 0, 5);
      table = Tensor<std::int64_t>::from_vector(t, {3, 3});
    }
    const std::vector<std::int64_t> slots{2, 0, 1}, positions{0, 3, 10};
    const Tensor<float> values = latent_rows<float>(3, 2, r, dr, 11);
    fp8_latent_cache_write(cache, table, index(slots), index(positions), values);

    const fp8::QuantizedMatrix q =
        fp8::quantize(reshape(narrow(reshape(values, {6, r + dr}), 1, 0, r), {6, r}), fp8::Tiling::row_1x128);
    const std::vector<fp8_e4m3> want_bytes = q.data.to_vector();
    const std::vector<float> want_scales = contiguous(q.scale).to_vector();
    const std::vector<float> v = values.to_vector();
    const std::vector<fp8_e4m3> got_bytes = cache.latent.to_vector();
    const std::vector<float> got_scales = cache.scales.to_vector(), got_rope = cache.rope.to_vector();
    std::vector<char> written(static_cast<std::size_t>(outer * rows), 0);
    for (std::int64_t a = 0; a < 3; ++a)
      for (std::int64_t s = 0; s < 2; ++s) {
        const std::int64_t j = positions[static_cast<std::size_t>(a)] + s, slot = slots[static_cast<std::size_t>(a)];
        const std::int64_t tok =
            paged ? t[static_cast<std::size_t>(slot * 3 + j / rows)] * rows + j % rows : slot * rows + j;
        written[static_cast<std::size_t>(tok)] = 1;
        const std::int64_t src = a * 2 + s;
        for (std::int64_t d = 0; d < r; ++d)
          ASSERT_EQ(got_bytes[static_cast<std::size_t>(tok * r + d)].bits,
                    want_bytes[static_cast<std::size_t>(src * r + d)].bits)
              << "token " << src << " column " << d;
        for (std::int64_t b = 0; b < nb; ++b)
          EXPECT_EQ(got_scales[static_cast<std::size_t>(tok * nb + b)],
                    want_scales[static_cast<std::size_t>(src * nb + b)]);
        for (std::int64_t d = 0; d < dr; ++d)
          EXPECT_EQ(got_rope[static_cast<std::size_t>(tok * dr + d)],
                    v[static_cast<std::size_t>(src * (r + dr) + r + d)]);
      }
    for (std::int64_t tok = 0; tok < outer * rows; ++tok) {
      if (written[static_cast<std::size_t>(tok)]) continue;
      for (std::int64_t b = 0; b < nb; ++b) ASSERT_EQ(got_scales[static_cast<std::size_t>(tok * nb + b)], 0.0f) << tok;
      for (std::int64_t d = 0; d < r; ++d) ASSERT_EQ(got_bytes[static_cast<std::size_t>(tok * r + d)].bits, 0) << tok;
    }
    // The scales differ from tile to tile by orders of magnitude (the rows' construction).
    EXPECT_GT(*std::max_element(want_scales.begin(), want_scales.end()) /
                  *std::min_element(want_scales.begin(), want_scales.end()),
              100.0f);
  }
}

// Attention over the FP8 cache = the bf16-cache op in double over the dequantized cache.
template <class T>
void check_attention_equals_dequantized(std::int64_t r, std::int64_t dr, std::int64_t heads, std::int64_t block_tokens,
                                        const std::vector<std::int64_t>& lengths, bool paged, double tolerance) {
  const auto count = static_cast<std::int64_t>(lengths.size());
  const std::int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  const std::int64_t max_blocks = (longest + block_tokens - 1) / block_tokens;
  // Paged: count + 1 sequences (the last one unused), sequences 1.. sharing sequence 0's first
  // block; contiguous: count + 1 slots of `longest` rows, rows taking slots in reverse.
  const std::int64_t sequences = count + 1;
  const std::int64_t outer = paged ? sequences * max_blocks : sequences, rows = paged ? block_tokens : longest;
  const auto cache = Fp8LatentCache<T>::zeros(outer, rows, r, dr, Device::cpu());
  Tensor<std::int64_t> table;
  std::vector<std::int64_t> slots;
  for (std::int64_t a = 0; a < count; ++a) slots.push_back(paged ? a : count - a);
  if (paged)
    table =
        Tensor<std::int64_t>::from_vector(shuffled_table(sequences, max_blocks, outer, 1, 17), {sequences, max_blocks});
  // Every row's tokens written in one call per row (positions 0 .. L − 1); on shared blocks the
  // later rows overwrite the earlier ones' first block, which all of them then read.
  for (std::int64_t a = 0; a < count; ++a) {
    const std::int64_t L = lengths[static_cast<std::size_t>(a)];
    fp8_latent_cache_write(cache, table, index({slots[static_cast<std::size_t>(a)]}), index({0}),
                           latent_rows<T>(1, L, r, dr, 100 + static_cast<std::uint64_t>(a)));
  }
  const Tensor<double> deq = dequantize_latent_cache(cache);
  const double scale = 1.0 / std::sqrt(static_cast<double>(r + dr)) / 50.0;  // keeps the softmax from one-hot
  for (const std::int64_t queries : {1, 2}) {
    SCOPED_TRACE(queries == 1 ? "one query token" : "two query tokens");
    std::vector<std::int64_t> len = lengths;
    for (auto& L : len) L = std::max(L, queries);
    Generator gen{23 + static_cast<std::uint64_t>(queries), 0};
    const Tensor<T> q = cast<T>(randn<double>({count, queries, heads, r + dr}, 0.0, 1.0, Device::cpu(), gen));
    const Tensor<T> got = fp8_latent_decode_attention(q, cache, table, index(slots), index(len), scale);
    Tensor<double> want;
    if (paged) {
      want = paged_decode_attention(cast<double>(q), deq, narrow(deq, 3, 0, r), table, index(slots), index(len), scale);
    } else {
      std::vector<Tensor<double>> per_query;  // the contiguous op takes one query: query t over L − (T − 1 − t)
      for (std::int64_t t = 0; t < queries; ++t) {
        std::vector<std::int64_t> upto = len;
        for (auto& L : upto) L -= queries - 1 - t;
        const Tensor<double> qt = reshape(narrow(cast<double>(q), 1, t, 1), {count, heads, r + dr});
        per_query.push_back(
            unsqueeze(decode_attention(qt, deq, narrow(deq, 3, 0, r), index(slots), index(upto), scale), 1));
      }
      want = queries == 1 ? per_query[0] : cat(per_query, 1);
    }
    EXPECT_LT(relative_error(got, want), tolerance);
  }
}

TEST(LatentFp8Cache, AttentionEqualsDequantizedCache) {
  const std::vector<std::int64_t> odd{1, 63, 64, 65, 1000};
  for (const bool paged : {true, false}) {
    SCOPED_TRACE(paged ? "paged" : "contiguous");
    // The big config's latent (256 + 32, 12 heads) over 64-token blocks, and a latent with a
    // partial tile (200 + 8, 3 heads) over 5-token blocks.
    check_attention_equals_dequantized<double>(256, 32, 12, 64, odd, paged, 1e-12);
    check_attention_equals_dequantized<double>(200, 8, 3, 5, {7, 1, 13}, paged, 1e-12);
    // float and bf16 queries: the op rounds its output once (2^-24, 2^-9 relative).
    check_attention_equals_dequantized<float>(256, 32, 12, 64, {65, 1, 300}, paged, 1e-6);
    check_attention_equals_dequantized<bf16>(200, 8, 3, 5, {7, 1, 13}, paged, 4e-3);
  }
}

TEST(LatentFp8Cache, Errors) {
  const auto cache = Fp8LatentCache<float>::zeros(4, 8, 32, 8, Device::cpu());
  const Tensor<std::int64_t> table = Tensor<std::int64_t>::from_vector({0, 1, 2, 3}, {2, 2}), none;
  const auto q = zeros<float>({1, 1, 2, 40});
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(zeros<float>({1, 1, 2, 41}), cache, table, index({0}), index({3}), 1.0),
                    "fp8_latent_decode_attention", "needs q [count, T (1 or 2), heads, 40]");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(zeros<float>({1, 3, 2, 40}), cache, table, index({0}), index({3}), 1.0),
                    "fp8_latent_decode_attention", "T (1 or 2)");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(q, cache, table, index({2}), index({3}), 1.0),
                    "fp8_latent_decode_attention", "slot 2 of batch row 0", "2 sequences");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(q, cache, table, index({0}), index({17}), 1.0),
                    "fp8_latent_decode_attention", "needs block 2", "table of 2");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(zeros<float>({1, 2, 2, 40}), cache, none, index({0}), index({1}), 1.0),
                    "fp8_latent_decode_attention", "length 1 of batch row 0", "2 query token");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(q, cache, none, index({0}), index({9}), 1.0),
                    "fp8_latent_decode_attention", "length 9", "capacity 8");
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(q, cache, none, index({0}), index({3}), NAN), "scale must be finite");
  Fp8LatentCache<float> bad = cache;
  bad.scales = zeros<float>({4, 8, 2});
  EXPECT_KILN_ERROR(fp8_latent_decode_attention(q, bad, none, index({0}), index({3}), 1.0), "do not fit each other");
  EXPECT_KILN_ERROR(fp8_latent_cache_write(cache, table, index({0}), index({0}), zeros<float>({1, 1, 41})),
                    "fp8_latent_cache_write", "are not [count, steps, 40]");
  EXPECT_KILN_ERROR(fp8_latent_cache_write(cache, table, index({0}), index({15}), zeros<float>({1, 2, 40})),
                    "paged_cache_write", "position 16", "needs block 2");
  EXPECT_KILN_ERROR(Fp8LatentCache<float>::zeros(4, 8, 0, 8, Device::cpu()), "Fp8LatentCache", "positive");
  // FP8 is MLA's latent cache: a Llama model refuses it.
  auto llama = make_llama<double>(3);
  infer::Engine<nn::LlamaForCausalLM<double>> engine(*llama);
  infer::GenerateOptions o;
  o.fp8_cache = true;
  EXPECT_KILN_ERROR((void)engine.generate({{1, 2}}, infer::SamplingParams{}, o), "generate", "fp8_cache",
                    "DeepSeek-V3 model");
}

// Generation with the FP8 cache: every drawn token's logits are the uncached forward's within
// FP8's error (the prefill's exactly); the same tokens on every layout, with and without
// speculative decoding.
TEST(LatentFp8Cache, EngineGeneratesThroughIt) {
  auto m = make_deepseek<double>(41, fp8_cache_deepseek_config(), 0.4);
  const auto prompts = random_prompts(m->vocab_size(), {5, 1, 4, 7, 3}, 60);
  infer::SamplingParams p;
  p.temperature = 0.9;
  p.top_p = 0.95;
  p.max_new_tokens = 12;
  p.seed = 7;
  infer::Engine<nn::DeepseekV3ForCausalLM<double>> engine(*m);
  infer::GenerateOptions base;
  base.samples_per_prompt = 2;
  base.fp8_cache = true;

  LogitsLog log;
  infer::GenerateOptions o = base;
  o.on_logits = log.hook();
  const auto out = engine.generate(prompts, p, o);
  // Per drawn token, its logits row against the uncached forward's. The first token of a sample
  // comes from the prefill, which attends over the exact latents: equal. The others read the
  // quantized cache: FP8's error, e4m3 keeping 3 mantissa bits (2^-4 relative rounding at most,
  // about 2% rms of a tile's largest value), carried through W_UV, o_proj and the layers above.
  // Measured on this model (latent rank 32, the GPU test's config): rows 0.4-10% off, median 1.2%
  // (at rank 8: 0.2-5%, median ~1%); an MoE layer that routes a token to another expert after the
  // perturbation makes a rare row far off (0.43 seen), hence the median.
  // A scale applied to the wrong tile or token is off by orders of magnitude (the first test's
  // rows), a wrong row by O(1): both fail the median.
  const auto errors = row_errors_against_full_forward(*m, prompts, out, log);
  std::size_t rows = 0;
  for (const auto& e : errors) {
    ASSERT_FALSE(e.empty());
    EXPECT_LT(e.front(), 1e-10) << "the prefill's logits";
    rows += e.size();
  }
  ASSERT_GT(rows, 60u);
  const double median = median_after_first_token(errors);
  EXPECT_LT(median, 2.5e-2);
  EXPECT_GT(median, 1e-4) << "the decode steps read exact latents: the cache is not quantized";

  for (const std::int64_t block_tokens : {0, 3, 64}) {
    for (const bool speculative : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "blocks of " << block_tokens << (speculative ? ", speculative" : ""));
      infer::GenerateOptions v = base;
      v.cache_block_tokens = block_tokens;
      v.speculative = speculative;
      v.max_batch = 3;  // samples refill the rows as others finish
      EXPECT_EQ(tokens_of(engine.generate(prompts, p, v)), tokens_of(out));
    }
  }
}

// Bytes a token and layer: r e4m3 + ceil(r/128) float scales + dr values of T, against r + dr of T.
TEST(LatentFp8Cache, CacheBytes) {
  auto m = make_deepseek<float>(5);
  const auto& c = m->model.config;
  const auto layout = infer::CacheLayout::paged(3, 20, 4, 15);
  const std::int64_t tokens = 15 * 4, layers = c.num_hidden_layers;
  const auto plain = m->make_decode_cache(layout);
  const auto fp8 = m->make_decode_cache(layout, false, infer::CacheFormat::fp8);
  EXPECT_EQ(plain.kv.format(), infer::CacheFormat::model);
  EXPECT_EQ(fp8.kv.format(), infer::CacheFormat::fp8);
  EXPECT_EQ(plain.kv.bytes(), layers * tokens * (c.kv_lora_rank + c.qk_rope_head_dim) * 4);
  EXPECT_EQ(fp8.kv.bytes(),
            layers * tokens * (c.kv_lora_rank + 4 * ((c.kv_lora_rank + 127) / 128) + c.qk_rope_head_dim * 4));
}
