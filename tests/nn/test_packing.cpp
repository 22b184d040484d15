// Sequence packing (nn/attention.hpp): several sequences end to end in one row, cu_seqlens marking
// where each begins, rope positions restarting per sequence. A packed sequence must compute what it
// computes alone: its logits and, for a loss summed over the sequences, every parameter gradient.
// In double on the CPU (the composed path with the block-diagonal mask; the fused kernel's packing
// is checked on the GPU in test_modules_cuda.cpp and test_attention_cuda.cpp).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "infer_test_util.hpp"
#include "test_util.hpp"

namespace {

using namespace kiln;
using namespace kiln::testing;

// Random ids for sequences of the given lengths: each alone [1, L_s], and all packed [1, Σ L].
struct Packed {
  std::vector<Tensor<std::int64_t>> alone;
  Tensor<std::int64_t> ids, cu_seqlens;
};

Packed pack(const std::vector<std::int64_t>& lengths, std::int64_t vocab, std::uint64_t seed) {
  Generator gen{seed, 0};
  Packed p;
  std::vector<std::int64_t> all, cu{0};
  for (const std::int64_t L : lengths) {
    const std::vector<std::int64_t> ids = randint<std::int64_t>(0, vocab, {L}, Device::cpu(), gen).to_vector();
    p.alone.push_back(Tensor<std::int64_t>::from_vector(ids, {1, L}));
    all.insert(all.end(), ids.begin(), ids.end());
    cu.push_back(cu.back() + L);
  }
  p.ids = Tensor<std::int64_t>::from_vector(all, {1, cu.back()});
  p.cu_seqlens = Tensor<std::int64_t>::from_vector(cu, {static_cast<std::int64_t>(cu.size())});
  return p;
}

// Logits of the packed row equal each sequence's logits alone, and the gradients of
// Σ_s sum(logits_s ⊙ r_s) agree: nothing crosses a sequence boundary either way.
template <class Model>
void check_packed_model(Model& packed_model, Model& alone_model, const std::vector<std::int64_t>& lengths) {
  const Packed p = pack(lengths, packed_model.vocab_size(), 5);
  const Tensor<double> logits = packed_model.forward(p.ids, nn::packed_positions(p.cu_seqlens), p.cu_seqlens);
  const std::vector<std::int64_t> cu = p.cu_seqlens.to_vector();
  const Tensor<double> r = randn<double>(logits.shape());
  sum(mul(logits, r)).backward();
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    const Tensor<double> alone = alone_model.forward(p.alone[s]);
    EXPECT_LE(relative_error(narrow(logits, 1, cu[s], lengths[s]).detach(), alone.detach()), 1e-12) << "sequence " << s;
    sum(mul(alone, narrow(r, 1, cu[s], lengths[s]))).backward();  // gradients accumulate over the sequences
  }
  const auto a = packed_model.named_parameters(), b = alone_model.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!b[i].second.grad().defined()) {  // unused by every sequence (an expert no token chose)
      EXPECT_FALSE(a[i].second.grad().defined()) << a[i].first;
      continue;
    }
    ASSERT_TRUE(a[i].second.grad().defined()) << a[i].first;
    EXPECT_LE(relative_error(a[i].second.grad(), b[i].second.grad()), 1e-11) << a[i].first;
  }
}

TEST(SequencePacking, PositionsRestartPerSequence) {
  EXPECT_EQ(nn::packed_positions(tensor<std::int64_t>({0, 3, 4, 7})).to_vector(),
            (std::vector<std::int64_t>{0, 1, 2, 0, 0, 1, 2}));
  EXPECT_EQ(nn::packed_positions(tensor<std::int64_t>({0, 7})).shape(), (Shape{1, 7}));
}

TEST(SequencePacking, MaskIsBlockDiagonalAndCausal) {
  const std::vector<std::int64_t> cu{0, 2, 5, 6};
  const std::vector<bool> mask = nn::packed_causal_mask(tensor<std::int64_t>({0, 2, 5, 6}), 6).to_vector();
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t j = 0; j < 6; ++j) {
      std::int64_t first = 0;
      for (std::size_t s = 0; s + 1 < cu.size(); ++s)
        if (i >= cu[s] && i < cu[s + 1]) first = cu[s];
      EXPECT_EQ(mask[static_cast<std::size_t>(i * 6 + j)], j > i || j < first) << "query " << i << " key " << j;
    }
}

TEST(SequencePacking, LlamaSequencesComputeAsAlone) {
  auto packed = make_llama<double>(3), alone = make_llama<double>(3);
  check_packed_model(*packed, *alone, {5, 1, 9, 4});
}

TEST(SequencePacking, DeepseekV3SequencesComputeAsAlone) {
  // MLA with q_lora_rank, a dense layer and two MoE layers (routing is per token, so packing
  // leaves it alone; the sequence-wise balance loss is not part of the logits).
  auto packed = make_deepseek<double>(4), alone = make_deepseek<double>(4);
  check_packed_model(*packed, *alone, {7, 2, 11});
}

TEST(SequencePacking, OneSequenceIsTheUnpackedForward) {
  auto m = make_llama<double>(6);
  const Packed p = pack({12}, m->vocab_size(), 9);
  EXPECT_EQ(relative_error(m->forward(p.ids, nn::packed_positions(p.cu_seqlens), p.cu_seqlens), m->forward(p.ids)), 0.0);
}

TEST(SequencePacking, Errors) {
  auto m = make_llama<double>(7);
  auto d = make_deepseek<double>(7);
  const Tensor<std::int64_t> ids = zeros<std::int64_t>({2, 6});
  EXPECT_KILN_ERROR(m->forward(ids, nn::positions_from(0, 6), tensor<std::int64_t>({0, 6})), "LlamaAttention", "B = 1");
  EXPECT_KILN_ERROR(d->forward(ids, nn::positions_from(0, 6), tensor<std::int64_t>({0, 6})), "MLA", "B = 1");
  const Tensor<std::int64_t> row = zeros<std::int64_t>({1, 6});
  EXPECT_KILN_ERROR(m->forward(row, nn::positions_from(0, 6), tensor<std::int64_t>({0, 4})), "LlamaModel", "S = 6");
  EXPECT_KILN_ERROR(d->forward(row, nn::positions_from(0, 6), tensor<std::int64_t>({0, 4, 2, 6})), "DeepseekV3Model",
                    "increase strictly");
  EXPECT_KILN_ERROR(nn::packed_positions(tensor<std::int64_t>({0, 3, 3})), "packed_positions", "increase strictly");
}

}  // namespace
