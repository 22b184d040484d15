// fused_causal_attention (ops/attention.hpp) on the CPU: forward against plain loops in double at
// odd lengths with grouped kv heads and Dk != Dv; packed sequences against each sequence run alone;
// gradients by finite differences (gradcheck) and against the composed path's autograd
// (nn::causal_attention: matmul, masked_fill, softmax, matmul) in float, bf16 and double; errors.
#include <kiln/nn/attention.hpp>
#include <kiln/ops/attention.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

// out[b, h, i] = Σ_j softmax_j(scale · q_i·k_j) v_j over j <= i (j >= the start of i's sequence), in
// double, one row at a time; q [B, H, S, Dk], k [B, Hkv, S, Dk], v [B, Hkv, S, Dv].
std::vector<double> plain_attention(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                                    double scale, const std::vector<std::int64_t>& cu = {}) {
  const std::int64_t B = q.size(0), H = q.size(1), S = q.size(2), Dk = q.size(3), Hkv = k.size(1), Dv = v.size(3);
  std::vector<double> out;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < S; ++i) {
        std::int64_t first = 0;
        for (std::size_t s = 0; s + 1 < cu.size(); ++s)
          if (cu[s] <= i) first = cu[s];
        const std::int64_t kvh = h / (H / Hkv);
        std::vector<double> w;
        double m = -INFINITY;
        for (std::int64_t j = first; j <= i; ++j) {
          double dot = 0.0;
          for (std::int64_t d = 0; d < Dk; ++d) dot += q.at({b, h, i, d}) * k.at({b, kvh, j, d});
          w.push_back(dot * scale);
          m = std::max(m, dot * scale);
        }
        double total = 0.0;
        for (double& x : w) total += (x = std::exp(x - m));
        for (std::int64_t d = 0; d < Dv; ++d) {
          double o = 0.0;
          for (std::int64_t j = first; j <= i; ++j) o += w[static_cast<std::size_t>(j - first)] / total * v.at({b, kvh, j, d});
          out.push_back(o);
        }
      }
  return out;
}

struct Qkv {
  Tensor<double> q, k, v;
};

Qkv random_qkv(std::int64_t B, std::int64_t H, std::int64_t Hkv, std::int64_t S, std::int64_t Dk, std::int64_t Dv,
               std::uint64_t seed) {
  Generator gen{seed, 0};
  return {randn<double>({B, H, S, Dk}, 0.0, 1.0, Device::cpu(), gen), randn<double>({B, Hkv, S, Dk}, 0.0, 1.0, Device::cpu(), gen),
          randn<double>({B, Hkv, S, Dv}, 0.0, 1.0, Device::cpu(), gen)};
}

// k or v [B, Hkv, S, D] repeated for the H / Hkv query heads of each group: [B, H, S, D].
template <class T>
Tensor<T> repeat_kv(const Tensor<T>& x, std::int64_t H) {
  const std::int64_t B = x.size(0), Hkv = x.size(1), S = x.size(2), D = x.size(3);
  return reshape(contiguous(expand(reshape(x, {B, Hkv, 1, S, D}), {B, Hkv, H / Hkv, S, D})), {B, H, S, D});
}

}  // namespace

TEST(FusedAttention, ForwardMatchesPlainLoops) {
  std::uint64_t seed = 1;
  for (std::int64_t S : {1, 7, 129})
    for (auto [H, Hkv] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4, 2}, {3, 3}, {4, 1}}) {
      const Qkv x = random_qkv(2, H, Hkv, S, 6, 5, seed++);
      const double scale = 1.0 / std::sqrt(6.0);
      const auto out = fused_causal_attention(x.q, x.k, x.v, scale);
      ASSERT_EQ(out.shape(), (Shape{2, H, S, 5}));
      // Both sides sum in double, in different orders (the op subtracts the row maximum once):
      // a few ulps.
      EXPECT_LE(relative_error(out.to_vector(), plain_attention(x.q, x.k, x.v, scale)), 1e-14)
          << "S " << S << " H " << H << " Hkv " << Hkv;
    }
}

TEST(FusedAttention, NonContiguousInputs) {
  const Qkv x = random_qkv(2, 3, 3, 9, 4, 4, 7);
  // [B, S, H, D] storage seen as [B, H, S, D]: the usual layout after the projections.
  const auto q = transpose(contiguous(transpose(x.q, 1, 2)), 1, 2);
  ASSERT_FALSE(q.is_contiguous());
  EXPECT_EQ(relative_error(fused_causal_attention(q, x.k, x.v, 0.5), fused_causal_attention(x.q, x.k, x.v, 0.5)), 0.0);
}

// A packed row of four sequences: each token attends within its own sequence only, so every
// sequence's rows equal that sequence run alone (the same loops in the same order: equal bits).
TEST(FusedAttention, PackedSequencesAttendWithinTheirOwn) {
  const std::vector<std::int64_t> cu{0, 3, 10, 11, 20};
  const Qkv x = random_qkv(1, 4, 2, 20, 5, 3, 11);
  const auto cu_t = Tensor<std::int64_t>::from_vector(cu, {5});
  const auto packed = fused_causal_attention(x.q, x.k, x.v, 0.4, cu_t);
  EXPECT_LE(relative_error(packed.to_vector(), plain_attention(x.q, x.k, x.v, 0.4, cu)), 1e-14);
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const std::int64_t from = cu[s], n = cu[s + 1] - cu[s];
    const auto alone = fused_causal_attention(narrow(x.q, 2, from, n), narrow(x.k, 2, from, n), narrow(x.v, 2, from, n), 0.4);
    EXPECT_EQ(relative_error(narrow(packed, 2, from, n), alone), 0.0) << "sequence " << s;
  }
  // One sequence spanning the row is the unpacked op.
  EXPECT_EQ(relative_error(fused_causal_attention(x.q, x.k, x.v, 0.4, tensor<std::int64_t>({0, 20})),
                           fused_causal_attention(x.q, x.k, x.v, 0.4)),
            0.0);
}

TEST(FusedAttention, GradcheckDouble) {
  const Qkv x = random_qkv(2, 4, 2, 5, 3, 2, 21);
  EXPECT_GRADCHECK([](const std::vector<Tensor<double>>& in) { return fused_causal_attention(in[0], in[1], in[2], 0.7); },
                   {x.q, x.k, x.v});
  const Qkv p = random_qkv(1, 2, 1, 7, 3, 4, 22);
  const auto cu = tensor<std::int64_t>({0, 2, 3, 7});
  EXPECT_GRADCHECK(
      [&](const std::vector<Tensor<double>>& in) { return fused_causal_attention(in[0], in[1], in[2], 0.9, cu); },
      {p.q, p.k, p.v});
}

// Gradients against the composed path (nn::causal_attention, autograd through matmul, masked_fill,
// softmax) run in double on the same (rounded) inputs. The fused op sums in double and rounds each
// gradient once to T: within 2^-24 (float) or 2^-8 (bf16) of each element, plus double's rounding.
TEST(FusedAttention, GradientsMatchTheComposedPath) {
  for (std::int64_t S : {1, 7, 129}) {
    const Qkv x = random_qkv(2, 4, 2, S, 6, 4, 30 + static_cast<std::uint64_t>(S));
    const auto up = randn<double>({2, 4, S, 4});
    const double scale = 1.0 / std::sqrt(6.0);
    auto run_fused = [&](auto zero) {
      using T = decltype(zero);
      // clone: fresh leaves (cast to the same type may share the tensor).
      auto q = clone(cast<T>(x.q)).requires_grad_(), k = clone(cast<T>(x.k)).requires_grad_(),
           v = clone(cast<T>(x.v)).requires_grad_();
      const auto out = fused_causal_attention(q, k, v, scale);
      sum(mul(out, cast<T>(up))).backward();
      return std::vector<Tensor<T>>{out.detach(), q.grad(), k.grad(), v.grad()};
    };
    auto run_composed = [&](auto zero) {
      using T = decltype(zero);
      auto q = clone(cast<double>(cast<T>(x.q))).requires_grad_(), k = clone(cast<double>(cast<T>(x.k))).requires_grad_(),
           v = clone(cast<double>(cast<T>(x.v))).requires_grad_();
      const auto out = nn::causal_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), scale);
      sum(mul(out, cast<double>(cast<T>(up)))).backward();
      return std::vector<Tensor<double>>{out.detach(), q.grad(), k.grad(), v.grad()};
    };
    const char* names[] = {"out", "dq", "dk", "dv"};
    const auto fd = run_fused(0.0);
    const auto cd = run_composed(0.0);
    const auto ff = run_fused(0.0f);
    const auto cf = run_composed(0.0f);
    const auto fb = run_fused(bf16{});
    const auto cb = run_composed(bf16{});
    for (std::size_t t = 0; t < 4; ++t) {
      EXPECT_LE(relative_error(fd[t], cd[t]), 1e-13) << names[t] << " double S " << S;
      EXPECT_LE(relative_error(ff[t], cf[t]), 0x1p-24 + 1e-13) << names[t] << " float S " << S;
      EXPECT_LE(relative_error(fb[t], cb[t]), 0x1p-8 + 1e-13) << names[t] << " bf16 S " << S;
    }
  }
}

TEST(FusedAttention, Errors) {
  const auto q = randn<float>({1, 4, 6, 8}), k = randn<float>({1, 2, 6, 8}), v = randn<float>({1, 2, 6, 3});
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, randn<float>({1, 2, 5, 3}), 1.0), "fused_causal_attention",
                    "[1, 4, 6, 8]", "[1, 2, 5, 3]");
  EXPECT_KILN_ERROR(fused_causal_attention(q, randn<float>({1, 3, 6, 8}), randn<float>({1, 3, 6, 3}), 1.0),
                    "fused_causal_attention", "Hkv dividing H");
  EXPECT_KILN_ERROR(fused_causal_attention(q, randn<float>({1, 2, 6, 7}), v, 1.0), "fused_causal_attention",
                    "[1, 2, 6, 7]");
  EXPECT_KILN_ERROR(fused_causal_attention(reshape(q, {4, 6, 8}), k, v, 1.0), "fused_causal_attention", "[4, 6, 8]");
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, NAN), "fused_causal_attention", "scale");
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, 1.0, tensor<std::int64_t>({0, 3, 5})), "fused_causal_attention",
                    "from 0 to S = 6");
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, 1.0, tensor<std::int64_t>({0, 3, 3, 6})), "fused_causal_attention",
                    "increase strictly");
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, 1.0, tensor<std::int64_t>({1, 6})), "fused_causal_attention",
                    "from 0");
  // A step past S before the end comes back to S: caught before any entry is written (it wrote
  // 8 entries into 6 once).
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, 1.0, tensor<std::int64_t>({0, 8, 6})), "fused_causal_attention",
                    "increase strictly");
  EXPECT_KILN_ERROR(fused_causal_attention(q, k, v, 1.0, tensor<std::int64_t>({6})), "fused_causal_attention",
                    "[n + 1]");
  const auto q2 = randn<float>({2, 4, 6, 8}), k2 = randn<float>({2, 2, 6, 8}), v2 = randn<float>({2, 2, 6, 3});
  EXPECT_KILN_ERROR(fused_causal_attention(q2, k2, v2, 1.0, tensor<std::int64_t>({0, 6})), "fused_causal_attention",
                    "B = 1");
}

// The automatic choice of the CUDA forward (kernels/attention/args.hpp, measured in docs/mla.md):
// the Hopper kernel from S 1024 on at every head-dim pair it takes, from S 512 on at qk 192; the
// plain one otherwise; a kernel named by the caller always wins where it applies.
TEST(FusedAttention, AutomaticForwardKernelChoice) {
  using kernels::AttentionKernel;
  const auto wanted = [](AttentionKernel k, DType t, std::int64_t dk, std::int64_t dv, std::int64_t seq) {
    return kernels::attention_hopper_wanted(k, t, dk, dv, seq);
  };
  const AttentionKernel automatic = AttentionKernel::automatic;
  EXPECT_TRUE(wanted(automatic, DType::bf16, 96, 64, 1024));
  EXPECT_TRUE(wanted(automatic, DType::bf16, 96, 64, 512));
  EXPECT_FALSE(wanted(automatic, DType::bf16, 96, 64, 511));
  EXPECT_FALSE(wanted(automatic, DType::bf16, 64, 64, 1023));
  EXPECT_FALSE(wanted(automatic, DType::bf16, 128, 128, 512));
  EXPECT_TRUE(wanted(automatic, DType::bf16, 192, 128, 512));
  EXPECT_FALSE(wanted(automatic, DType::bf16, 192, 128, 511));
  EXPECT_TRUE(wanted(automatic, DType::bf16, 192, 128, 4096));
  EXPECT_TRUE(wanted(AttentionKernel::hopper, DType::bf16, 96, 64, 1));
  EXPECT_FALSE(wanted(AttentionKernel::plain, DType::bf16, 192, 128, 4096));
  EXPECT_FALSE(wanted(automatic, DType::bf16, 48, 32, 4096));  // v 32: no Hopper instance
  EXPECT_FALSE(wanted(automatic, DType::f32, 192, 128, 4096));  // bf16 only
}

// Which views the CUDA kernels read in place (detail::attention_operand: the same tensor back)
// and with which strides (detail::head_layout), and which they get a contiguous copy of. Pure
// host logic, checked here on CPU tensors; tests/kernels/test_attention_cuda.cpp runs the views.
TEST(FusedAttention, OperandsReadInPlaceOrCopied) {
  using detail::attention_operand;
  using detail::head_layout;
  auto in_place = [](const Tensor<bf16>& t) { return attention_operand(t).data() == t.data(); };
  auto layout_is = [](const Tensor<bf16>& t, std::int64_t batch, std::int64_t head, std::int64_t row) {
    const kernels::HeadLayout l = head_layout(t);
    return l.batch == batch && l.head == head && l.row == row;
  };
  const auto contiguous_heads = zeros<bf16>({2, 3, 5, 16});
  EXPECT_TRUE(in_place(contiguous_heads));
  EXPECT_TRUE(layout_is(contiguous_heads, 240, 80, 16));
  // [B, S, H, d] seen as [B, H, S, d]: a query projection's output.
  const auto tokens = transpose(zeros<bf16>({2, 5, 3, 16}), 1, 2);
  EXPECT_TRUE(in_place(tokens));
  EXPECT_TRUE(layout_is(tokens, 240, 16, 48));
  // The two column ranges of one per-head projection [B, S, H, 16 + 8]: k's 16 and v's 8 columns.
  const auto kv = zeros<bf16>({2, 5, 3, 24});
  const auto k = transpose(narrow(kv, 3, 0, 16), 1, 2), v = transpose(narrow(kv, 3, 16, 8), 1, 2);
  EXPECT_TRUE(in_place(k) && in_place(v));
  EXPECT_TRUE(layout_is(v, 360, 24, 72));
  // One position, one batch row, one head: those strides are never used (0; the row's taken as d).
  const auto one = transpose(zeros<bf16>({1, 1, 3, 16}), 1, 2);
  EXPECT_TRUE(in_place(one));
  EXPECT_TRUE(layout_is(one, 0, 16, 16));
  // Copied: rows not 16-byte pieces apart, a start off a 16-byte boundary, columns not contiguous.
  for (const auto& t : {transpose(narrow(zeros<bf16>({2, 5, 3, 20}), 3, 0, 16), 1, 2),
                        transpose(narrow(kv, 3, 4, 16), 1, 2), transpose(zeros<bf16>({2, 3, 16, 5}), 2, 3)}) {
    const auto c = attention_operand(t);
    EXPECT_NE(c.data(), t.data());
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(c.to_vector(), contiguous(t).to_vector());
  }
}

// Where the CUDA backward writes each gradient (detail::plan_gradient_places with the kernels'
// AttentionPlaceable): where its input lay, in a fresh storage per input storage, MLA's k_nope and
// v sharing one (their gradients then are the kv projection's output gradient, no copy: autograd's
// in_place_gradient); a contiguous tensor where that place cannot be reused. Metadata only, so it
// runs on the CPU.
TEST(FusedAttention, GradientsPlacedWhereTheirInputsLay) {
  using detail::plan_gradient_places;
  const std::int64_t B = 2, S = 5, H = 3, dn = 16, dr = 8, dv = 16;
  // MLA's five inputs: q_nope from [B, S, H, dn + dr] (its rotary columns rotated into q_pe, a
  // tensor of its own), k_nope and v from [B, S, H, dn + dv], the one rotary key expanded.
  const auto q_full = zeros<bf16>({B, S, H, dn + dr}), kv = zeros<bf16>({B, S, H, dn + dv});
  const auto q_nope = transpose(narrow(q_full, 3, 0, dn), 1, 2);
  const auto q_pe = transpose(zeros<bf16>({B, S, H, dr}), 1, 2);
  const auto k_nope = transpose(narrow(kv, 3, 0, dn), 1, 2), v = transpose(narrow(kv, 3, dn, dv), 1, 2);
  const auto k_pe = expand(reshape(zeros<bf16>({B, S, dr}), {B, 1, S, dr}), {B, H, S, dr});
  const std::vector<Tensor<bf16>> inputs{q_nope, q_pe, k_nope, k_pe, v};
  const detail::GradientPlan plan = plan_gradient_places(inputs, detail::AttentionPlaceable{});
  ASSERT_EQ(plan.places.size(), 5u);
  ASSERT_EQ(plan.storage_bytes.size(), 3u);  // q_full's, q_pe's, kv's
  for (const std::size_t i : {0u, 1u, 2u, 4u}) {
    SCOPED_TRACE(i);
    const detail::GradientPlace& p = plan.places[i];
    ASSERT_GE(p.storage, 0);
    EXPECT_EQ(p.offset, inputs[i].offset());
    EXPECT_EQ(p.strides, inputs[i].strides());
    EXPECT_EQ(plan.storage_bytes[static_cast<std::size_t>(p.storage)], inputs[i].storage()->nbytes());
  }
  EXPECT_EQ(plan.places[2].storage, plan.places[4].storage);  // k_nope and v: one storage
  EXPECT_NE(plan.places[0].storage, plan.places[2].storage);
  EXPECT_EQ(plan.places[3].storage, -1);  // the expanded key: one gradient per head, contiguous

  std::vector<Shape> shapes;
  for (const auto& t : inputs) shapes.push_back(t.shape());
  const std::vector<Tensor<bf16>> grads = detail::gradient_tensors<bf16>(plan, shapes, Device::cpu());
  EXPECT_EQ(grads[2].storage(), grads[4].storage());
  EXPECT_EQ(grads[4].offset(), dn);
  EXPECT_EQ(grads[4].strides(), v.strides());
  EXPECT_TRUE(grads[3].is_contiguous());
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(grads[i].shape(), inputs[i].shape());

  // Contiguous instead: q and k the same tensor (one place, two gradients); a start off a 16-byte
  // boundary; rows not 16-byte pieces apart; a view into a storage over 8 times its size.
  const auto heads = transpose(zeros<bf16>({B, S, H, dn}), 1, 2);
  const detail::GradientPlan shared =
      plan_gradient_places(std::vector<Tensor<bf16>>{heads, heads, v}, detail::AttentionPlaceable{});
  EXPECT_EQ(shared.places[0].storage, -1);
  EXPECT_EQ(shared.places[1].storage, -1);
  EXPECT_EQ(shared.places[2].storage, 0);
  auto placed = [&](const Tensor<bf16>& t) {
    return plan_gradient_places(std::vector<Tensor<bf16>>{t}, detail::AttentionPlaceable{}).places[0].storage == 0;
  };
  EXPECT_FALSE(placed(transpose(narrow(kv, 3, 4, 16), 1, 2)));
  EXPECT_FALSE(placed(transpose(narrow(zeros<bf16>({B, S, H, 20}), 3, 0, 16), 1, 2)));
  EXPECT_FALSE(placed(transpose(narrow(zeros<bf16>({B, S, H, 16 * 9}), 3, 0, 16), 1, 2)));
  EXPECT_TRUE(placed(transpose(narrow(zeros<bf16>({B, S, H, 16 * 8}), 3, 0, 16), 1, 2)));
}

// fused_causal_attention_parts on the CPU computes through the concatenations: the same output
// and gradients as the op on them (the GPU test checks the kernels reading the parts), with MLA's
// one rotary key expanded over the heads; and its shape errors.
TEST(FusedAttention, PartsEqualTheConcatenation) {
  manual_seed(31);
  const std::int64_t B = 2, H = 3, S = 9, dn = 5, dr = 3, dv = 4;
  const std::vector<Tensor<double>> x{randn<double>({B, H, S, dn}), randn<double>({B, H, S, dr}),
                                      randn<double>({B, H, S, dn}), randn<double>({B, 1, S, dr}),
                                      randn<double>({B, H, S, dv})};
  const auto up = randn<double>({B, H, S, dv});
  auto grads = [&](bool parts) {
    std::vector<Tensor<double>> l;
    for (const auto& t : x) l.push_back(clone(t).requires_grad_());
    const auto k_pe = expand(l[3], {B, H, S, dr});
    const auto out = parts ? fused_causal_attention_parts(l[0], l[1], l[2], k_pe, l[4], 0.3)
                           : fused_causal_attention(cat(std::vector<Tensor<double>>{l[0], l[1]}, -1),
                                                    cat(std::vector<Tensor<double>>{l[2], k_pe}, -1), l[4], 0.3);
    out.backward(up);
    std::vector<std::vector<double>> r{out.detach().to_vector()};
    for (const auto& t : l) r.push_back(t.grad().to_vector());
    return r;
  };
  EXPECT_EQ(grads(true), grads(false));
  const auto q = randn<double>({1, 2, 4, 6}), p = randn<double>({1, 2, 4, 2}), vv = randn<double>({1, 2, 4, 3});
  EXPECT_KILN_ERROR(fused_causal_attention_parts(q, randn<double>({1, 2, 5, 2}), q, p, vv, 1.0),
                    "fused_causal_attention_parts", "[1, 2, 5, 2]");
  EXPECT_KILN_ERROR(fused_causal_attention_parts(q, p, q, randn<double>({1, 2, 4, 3}), vv, 1.0),
                    "fused_causal_attention_parts", "dr 2");
  EXPECT_KILN_ERROR(fused_causal_attention_parts(q, p, q, p, randn<double>({1, 2, 3, 3}), 1.0),
                    "fused_causal_attention_parts", "do not fit");
}
