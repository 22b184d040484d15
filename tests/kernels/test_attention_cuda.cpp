// fused_causal_attention on CUDA (kernels/attention/attention.cuh) against the CPU op in double
// on the same bf16 inputs: the output and every gradient, at S = 1, 7, 129 and 1000 (one
// partial query tile, several, 16 key tiles), both MLA head-dim sets (96, 64) and (192, 128) and
// the other compiled pairs, grouped kv heads (2 query heads a kv head, 1, 3), several packed
// sequences of different lengths in one row (crossing tile boundaries), poisoned outputs; the
// backward's determinism (two runs, the same bits, for each backward kernel), strided views read
// in place (the same bits as contiguous copies), MLA's q and k read from their parts
// (fused_causal_attention_parts: the same bits as the concatenations) and the errors of
// unsupported calls. Every case
// runs the automatic choice, the plain forward and backward and, on an sm_90 GPU in bf16, the
// Hopper forward with the Hopper backward (where its head dims allow, else the plain one); the
// kernel trace proves which kernels ran.
//
// Tolerances. The reference is the op in double on the rounded inputs; the kernels accumulate in
// float and round three things to 16 bits: the probabilities before P·V (and before dV = Pᵀ·dO),
// dS before dQ = dS·K and dK = dSᵀ·Q, and the outputs. Each rounding is a relative error of at
// most u = 2^-9 (bf16) per element, about u/√3 on average; a sum of many such terms has a
// relative error (in norm) near u/√3 as well, and the outputs near u. The bound is 4u = 2^-7 for
// bf16 in norm. As a second, self-calibrating check, the kernel must be
// at least as accurate as kiln's composed path run in the same precision on the GPU (which rounds
// the scores and the probabilities to 16 bits as well).
#include <kiln/nn/attention.hpp>
#include <kiln/ops/attention.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

struct AttentionCase {
  std::int64_t B, H, Hkv, S, Dk, Dv;
  std::vector<std::int64_t> cu;  // packed sequences (B = 1) when not empty
};

std::ostream& operator<<(std::ostream& os, const AttentionCase& c) {
  os << "B " << c.B << " H " << c.H << "/" << c.Hkv << " S " << c.S << " Dk " << c.Dk << " Dv " << c.Dv;
  if (!c.cu.empty()) {
    os << " cu";
    for (auto x : c.cu) os << " " << x;
  }
  return os;
}

// out, dq, dk, dv of fused_causal_attention on the given device in T, returned as double on the
// CPU, for inputs and an upstream gradient given in double (rounded to T first).
template <class T>
std::vector<Tensor<double>> run_fused(const std::vector<Tensor<double>>& x, const Tensor<double>& up, double scale,
                                      const std::vector<std::int64_t>& cu, Device device,
                                      kernels::AttentionKernel kernel = kernels::AttentionKernel::automatic,
                                      kernels::AttentionKernel backward = kernels::AttentionKernel::automatic) {
  std::vector<Tensor<T>> leaves;
  for (const auto& t : x) leaves.push_back(to(cast<T>(t), device).requires_grad_());
  const Tensor<std::int64_t> cu_t =
      cu.empty() ? Tensor<std::int64_t>() : Tensor<std::int64_t>::from_vector(cu, {static_cast<std::int64_t>(cu.size())});
  const auto out = fused_causal_attention(leaves[0], leaves[1], leaves[2], scale, cu_t, kernel, backward);
  out.backward(to(cast<T>(up), device));
  std::vector<Tensor<double>> r{cast<double>(on_cpu(out.detach()))};
  for (const auto& l : leaves) r.push_back(cast<double>(on_cpu(l.grad())));
  return r;
}

// The composed path (matmul, masked_fill, softmax, matmul) in T on the GPU, kv heads repeated;
// unpacked rows only.
template <class T>
std::vector<Tensor<double>> run_composed(const std::vector<Tensor<double>>& x, const Tensor<double>& up, double scale) {
  std::vector<Tensor<T>> leaves;
  for (const auto& t : x) leaves.push_back(on_gpu(cast<T>(t)).requires_grad_());
  const std::int64_t B = x[0].size(0), H = x[0].size(1), Hkv = x[1].size(1), S = x[0].size(2);
  auto repeat = [&](const Tensor<T>& t) {
    const std::int64_t D = t.size(3);
    return reshape(contiguous(expand(reshape(t, {B, Hkv, 1, S, D}), {B, Hkv, H / Hkv, S, D})), {B, H, S, D});
  };
  const auto out = nn::causal_attention(leaves[0], repeat(leaves[1]), repeat(leaves[2]), scale);
  out.backward(on_gpu(cast<T>(up)));
  std::vector<Tensor<double>> r{cast<double>(on_cpu(out.detach()))};
  for (const auto& l : leaves) r.push_back(cast<double>(on_cpu(l.grad())));
  return r;
}

template <class T>
void check_case(const AttentionCase& c, double tolerance) {
  SCOPED_TRACE(::testing::Message() << c << " " << dtype_name<T>);
  const std::vector<Tensor<double>> x{cast<double>(cast<T>(randn<double>({c.B, c.H, c.S, c.Dk}))),
                                      cast<double>(cast<T>(randn<double>({c.B, c.Hkv, c.S, c.Dk}))),
                                      cast<double>(cast<T>(randn<double>({c.B, c.Hkv, c.S, c.Dv})))};
  const auto up = cast<double>(cast<T>(randn<double>({c.B, c.H, c.S, c.Dv})));
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dk));
  const auto want = run_fused<double>(x, up, scale, c.cu, Device::cpu());
  const auto composed = c.cu.empty() ? run_composed<T>(x, up, scale) : std::vector<Tensor<double>>{};
  // The automatic choice, the plain forward and backward by name and, on an sm_90 GPU at their head
  // dims, the Hopper forward and backward by name; each launch checked.
  using kernels::AttentionKernel;
  const bool hopper_backward = gpu_is_hopper() && kernels::attention_hopper_backward_supports(dtype_of<T>, c.Dk, c.Dv);
  std::vector<std::pair<const char*, std::vector<Tensor<double>>>> runs;
  auto run = [&](const char* name, AttentionKernel forward, AttentionKernel backward, const char* forward_variant,
                 const char* backward_variant) {
    poison_cached_memory();
    KernelTrace trace;
    runs.emplace_back(name, run_fused<T>(x, up, scale, c.cu, gpu, forward, backward));
    EXPECT_EQ(trace.count("attention_forward"), 1) << name;
    EXPECT_EQ(trace.count("attention_backward"), 1) << name;
    if (forward_variant) {
      EXPECT_EQ(trace.count(forward_variant), 1) << name;
    }
    EXPECT_EQ(trace.count(backward_variant), 1) << name;
  };
  // The automatic backward is the Hopper one wherever it applies.
  run("automatic", AttentionKernel::automatic, AttentionKernel::automatic, nullptr,
      hopper_backward ? "attention_backward/hopper" : "attention_backward/mma_sm80");
  run("plain", AttentionKernel::plain, AttentionKernel::plain, "attention_forward/mma_sm80",
      "attention_backward/mma_sm80");
  if (gpu_is_hopper() && kernels::attention_hopper_supports(dtype_of<T>, c.Dk, c.Dv)) {
    run("hopper", AttentionKernel::hopper, hopper_backward ? AttentionKernel::hopper : AttentionKernel::plain,
        "attention_forward/hopper", hopper_backward ? "attention_backward/hopper" : "attention_backward/mma_sm80");
  }
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (const auto& [kernel, got] : runs) {
    SCOPED_TRACE(kernel);
    for (std::size_t t = 0; t < 4; ++t) {
      const ErrorStats e = relative_error(got[t], want[t]);
      EXPECT_LE(e, tolerance) << names[t];
      const ErrorStats ec = composed.empty() ? ErrorStats{} : relative_error(composed[t], want[t]);
      // No worse than the composed path in the same precision (10% slack for the luck of rounding on
      // tiny cases). Not where the reference is 0: at S = 1, dq = dk = 0 exactly (one key: P = 1,
      // dP = D); the composed path then gets exact zeros, while the kernel's D = dout·out, from the
      // rounded output, leaves dP − D at the level of that rounding (seen: 1e-6 of |dq|'s scale),
      // which the fixed bound above covers.
      if (!composed.empty() && ec.ref_rms > 0) {
        EXPECT_LE(e.relative, 1.1 * ec.relative + 1e-6) << names[t] << ": composed path's error " << ec;
      }
    }
  }
}

}  // namespace

TEST(FusedAttentionCuda, MatchesTheCpuReferenceForBothMlaHeadDims) {
  KILN_REQUIRE_GPU();
  manual_seed(170);
  for (std::int64_t S : {1, 7, 129, 1000}) {
    check_case<bf16>({2, 4, 2, S, 96, 64, {}}, 0x1p-7);   // kiln's big config: qk 64 + 32, v 64
    check_case<bf16>({1, 3, 3, S, 192, 128, {}}, 0x1p-7);  // DeepSeek-V3: qk 128 + 64, v 128
  }
}

TEST(FusedAttentionCuda, EveryCompiledHeadDimPair) {
  KILN_REQUIRE_GPU();
  manual_seed(171);
  for (auto [dk, dv] : std::vector<std::pair<std::int64_t, std::int64_t>>{{48, 32}, {64, 64}, {128, 128}}) {
    check_case<bf16>({2, 2, 1, 77, dk, dv, {}}, 0x1p-7);
    check_case<bf16>({1, 3, 1, 130, dk, dv, {}}, 0x1p-7);
  }
  check_case<bf16>({2, 4, 2, 200, 192, 128, {}}, 0x1p-7);
}

// The Hopper kernels are persistent (one block a multiprocessor, taking tiles of 128 queries or keys
// of one head from a counter): hundreds of tiles, so that every block runs several, of unequal
// lengths (S 130: a full and a 2-row block per head), with grouped kv heads; and packed sequences
// over many heads. Tiles (forward and dQ / dK and dV): 1024 / 512, 320 / 160, 288 / 72.
TEST(FusedAttentionCuda, MoreTilesThanMultiprocessors) {
  KILN_REQUIRE_GPU();
  manual_seed(175);
  check_case<bf16>({64, 8, 4, 130, 96, 64, {}}, 0x1p-7);
  check_case<bf16>({20, 8, 4, 200, 192, 128, {}}, 0x1p-7);
  check_case<bf16>({1, 96, 24, 333, 96, 64, {0, 5, 70, 71, 200, 333}}, 0x1p-7);
}

TEST(FusedAttentionCuda, PackedSequences) {
  KILN_REQUIRE_GPU();
  manual_seed(172);
  // Sequences of 5, 65, 1, 129 and 133 tokens: boundaries inside and on 64-token tiles.
  const std::vector<std::int64_t> cu{0, 5, 70, 71, 200, 333};
  check_case<bf16>({1, 4, 2, 333, 96, 64, cu}, 0x1p-7);
  check_case<bf16>({1, 2, 1, 333, 192, 128, cu}, 0x1p-7);
  check_case<bf16>({1, 2, 2, 64, 96, 64, {0, 64}}, 0x1p-7);
  // Each packed sequence equals the sequence run alone, bit for bit: its rows see the same keys
  // in the same tiles only when it starts on a tile boundary, so compare values within rounding
  // against the reference instead (done above) and the first sequence exactly here.
  const auto q = on_gpu(randn<bf16>({1, 2, 333, 96})), k = on_gpu(randn<bf16>({1, 2, 333, 96})),
             v = on_gpu(randn<bf16>({1, 2, 333, 64}));
  const auto packed = fused_causal_attention(q, k, v, 0.1, Tensor<std::int64_t>::from_vector(cu, {6}));
  const auto alone = fused_causal_attention(narrow(q, 2, 0, 5), narrow(k, 2, 0, 5), narrow(v, 2, 0, 5), 0.1);
  EXPECT_EQ(relative_error(on_cpu(narrow(packed, 2, 0, 5)), on_cpu(alone)), 0.0);
}

TEST(FusedAttentionCuda, BackwardIsDeterministic) {
  KILN_REQUIRE_GPU();
  manual_seed(173);
  using kernels::AttentionKernel;
  auto grads = [](const std::vector<Tensor<bf16>>& x, const Tensor<bf16>& up, AttentionKernel backward) {
    std::vector<Tensor<bf16>> leaves;
    for (const auto& t : x) leaves.push_back(clone(t).requires_grad_());
    fused_causal_attention(leaves[0], leaves[1], leaves[2], 0.125, Tensor<std::int64_t>(), AttentionKernel::automatic,
                           backward)
        .backward(up);
    std::vector<std::vector<bf16>> r;
    for (const auto& l : leaves) r.push_back(on_cpu(l.grad()).to_vector());
    return r;
  };
  // Both MLA head-dim sets, grouped kv heads; each backward kernel twice.
  for (auto [dk, dv] : std::vector<std::pair<std::int64_t, std::int64_t>>{{96, 64}, {192, 128}}) {
    const std::vector<Tensor<bf16>> x{on_gpu(randn<bf16>({2, 8, 300, dk})), on_gpu(randn<bf16>({2, 2, 300, dk})),
                                      on_gpu(randn<bf16>({2, 2, 300, dv}))};
    const auto up = on_gpu(randn<bf16>({2, 8, 300, dv}));
    std::vector<AttentionKernel> backwards{AttentionKernel::plain};
    if (gpu_is_hopper()) backwards.push_back(AttentionKernel::hopper);
    for (AttentionKernel backward : backwards) {
      SCOPED_TRACE(::testing::Message() << "dk " << dk << " dv " << dv
                                        << (backward == AttentionKernel::hopper ? " hopper" : " plain"));
      const auto a = grads(x, up, backward), b = grads(x, up, backward);
      for (std::size_t t = 0; t < 3; ++t) {
        ASSERT_EQ(a[t].size(), b[t].size());
        EXPECT_EQ(std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(bf16)), 0) << "gradient " << t;
      }
    }
  }
}

TEST(FusedAttentionCuda, NonContiguousAndMisalignedInputs) {
  KILN_REQUIRE_GPU();
  manual_seed(174);
  const auto q = randn<bf16>({1, 2, 70, 64}), k = randn<bf16>({1, 1, 70, 64}), v = randn<bf16>({1, 1, 70, 64});
  const auto want = on_cpu(fused_causal_attention(on_gpu(q), on_gpu(k), on_gpu(v), 0.2));
  // q stored [B, S, H, D] and seen as [B, H, S, D]; k one element past a 16-byte boundary.
  const auto qt = transpose(on_gpu(contiguous(transpose(q, 1, 2))), 1, 2);
  const auto kflat = on_gpu(cat(std::vector<Tensor<bf16>>{zeros<bf16>({1}), reshape(k, {70 * 64})}, 0));
  const auto kmis = reshape(narrow(kflat, 0, 1, 70 * 64), {1, 1, 70, 64});
  EXPECT_EQ(relative_error(on_cpu(fused_causal_attention(qt, kmis, on_gpu(v), 0.2)), want), 0.0);
}

// The kernels read q, k, v, out and dout through their strides (kernels/attention/args.hpp,
// HeadLayout): an MLA layer's operands as the projections leave them, q [B, S, H, Dk] seen as
// [B, H, S, Dk], k and v the two column ranges of one [B, S, Hkv, Dk + Dv] projection, and the
// upstream gradient arriving through transpose and reshape as the output projection sends it. The
// results equal those of contiguous copies of the same values bit for bit (the same arithmetic in
// the same order), with every kernel, packed and not, at odd lengths; no operand is copied
// (attention_operand hands each one back as it is), and the output is stored token-major.
TEST(FusedAttentionCuda, ReadsStridedViewsInPlace) {
  KILN_REQUIRE_GPU();
  manual_seed(176);
  using kernels::AttentionKernel;
  struct Case {
    std::int64_t B, H, Hkv, S, Dk, Dv;
    std::vector<std::int64_t> cu;
  };
  const std::vector<Case> cases{{2, 3, 3, 1, 96, 64, {}},    {2, 3, 3, 129, 96, 64, {}},
                                {1, 4, 2, 1000, 96, 64, {}}, {2, 2, 1, 130, 192, 128, {}},
                                {1, 4, 4, 333, 192, 128, {0, 5, 70, 71, 200, 333}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B " << c.B << " H " << c.H << "/" << c.Hkv << " S " << c.S << " Dk " << c.Dk
                                      << " Dv " << c.Dv << (c.cu.empty() ? "" : " packed"));
    const std::int64_t n_cu = static_cast<std::int64_t>(c.cu.size());
    const Tensor<std::int64_t> cu =
        c.cu.empty() ? Tensor<std::int64_t>() : Tensor<std::int64_t>::from_vector(c.cu, {n_cu});
    // Token-major storage, as the projections write it.
    const auto q_tokens = on_gpu(randn<bf16>({c.B, c.S, c.H, c.Dk}));
    const auto kv_tokens = on_gpu(randn<bf16>({c.B, c.S, c.Hkv, c.Dk + c.Dv}));
    const auto dy_tokens = on_gpu(randn<bf16>({c.B, c.S, c.H * c.Dv}));
    const auto q_view = transpose(q_tokens, 1, 2);
    const auto k_view = transpose(narrow(kv_tokens, 3, 0, c.Dk), 1, 2);
    const auto v_view = transpose(narrow(kv_tokens, 3, c.Dk, c.Dv), 1, 2);
    for (const auto& view : {q_view, k_view, v_view}) {
      if (c.S > 1) {
        EXPECT_FALSE(view.is_contiguous());  // at S = 1 the transposed q is contiguous
      }
      EXPECT_EQ(detail::attention_operand(view).data(), view.data()) << "an operand was copied";
    }
    std::vector<AttentionKernel> kernels{AttentionKernel::plain};
    if (gpu_is_hopper()) kernels.push_back(AttentionKernel::hopper);
    for (AttentionKernel kernel : kernels) {
      SCOPED_TRACE(kernel == AttentionKernel::hopper ? "hopper" : "plain");
      // out, then dq, dk, dv, each as contiguous values on the CPU.
      auto run = [&](const Tensor<bf16>& q, const Tensor<bf16>& k, const Tensor<bf16>& v) {
        const auto ql = q.detach().requires_grad_(), kl = k.detach().requires_grad_(), vl = v.detach().requires_grad_();
        const auto out = fused_causal_attention(ql, kl, vl, 0.1, cu, kernel, kernel);
        EXPECT_TRUE(transpose(out, 1, 2).is_contiguous()) << "the output is stored token-major";
        // What an output projection's input gradient looks like: [B, S, H·Dv] -> [B, H, S, Dv].
        const auto heads_per_token = reshape(transpose(out, 1, 2), {c.B, c.S, c.H * c.Dv});
        heads_per_token.backward(dy_tokens);
        return std::vector<std::vector<bf16>>{on_cpu(contiguous(out.detach())).to_vector(),
                                              on_cpu(contiguous(ql.grad())).to_vector(),
                                              on_cpu(contiguous(kl.grad())).to_vector(),
                                              on_cpu(contiguous(vl.grad())).to_vector()};
      };
      const auto got = run(q_view, k_view, v_view);
      const auto want = run(contiguous(q_view), contiguous(k_view), contiguous(v_view));
      const char* names[] = {"out", "dq", "dk", "dv"};
      for (std::size_t t = 0; t < 4; ++t) {
        ASSERT_EQ(got[t].size(), want[t].size());
        EXPECT_EQ(std::memcmp(got[t].data(), want[t].data(), got[t].size() * sizeof(bf16)), 0) << names[t];
      }
    }
  }
}

// fused_causal_attention_parts: MLA's q = [q_nope | q_pe] and k = [k_nope | k_pe] read from their
// parts (q_nope and v views of the projections, the one rotary key k_pe expanded over the heads,
// head stride 0). Output and all five gradients equal the op on the concatenations bit for bit
// (the shared memory tiles hold the same values), with every kernel, packed and not, at both MLA
// head-dim sets and odd lengths.
TEST(FusedAttentionCuda, PartsEqualTheConcatenation) {
  KILN_REQUIRE_GPU();
  manual_seed(177);
  using kernels::AttentionKernel;
  struct Case {
    std::int64_t B, H, S, dn, dr, dv;
    std::vector<std::int64_t> cu;
  };
  const std::vector<Case> cases{{2, 3, 1, 64, 32, 64, {}},   {2, 3, 129, 64, 32, 64, {}},
                                {1, 4, 1000, 64, 32, 64, {}}, {2, 2, 130, 128, 64, 128, {}},
                                {1, 3, 333, 128, 64, 128, {0, 5, 70, 71, 200, 333}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B " << c.B << " H " << c.H << " S " << c.S << " dn " << c.dn << " dr "
                                      << c.dr << (c.cu.empty() ? "" : " packed"));
    const std::int64_t n_cu = static_cast<std::int64_t>(c.cu.size());
    const Tensor<std::int64_t> cu =
        c.cu.empty() ? Tensor<std::int64_t>() : Tensor<std::int64_t>::from_vector(c.cu, {n_cu});
    // As nn::MLA has them: q's projection [B, S, H, dn + dr] (its nope columns), the rotated q_pe,
    // kv_b's output [B, S, H, dn + dv] (k_nope and v) and the one rotated key [B, S, dr].
    const auto q_proj = on_gpu(randn<bf16>({c.B, c.S, c.H, c.dn + c.dr}));
    const auto q_pe_tokens = on_gpu(randn<bf16>({c.B, c.S, c.H, c.dr}));
    const auto kv = on_gpu(randn<bf16>({c.B, c.S, c.H, c.dn + c.dv}));
    const auto k_pe_shared = on_gpu(randn<bf16>({c.B, c.S, c.dr}));
    const auto dy = on_gpu(randn<bf16>({c.B, c.S, c.H * c.dv}));
    std::vector<AttentionKernel> kernels{AttentionKernel::plain};
    if (gpu_is_hopper()) kernels.push_back(AttentionKernel::hopper);
    for (AttentionKernel kernel : kernels) {
      SCOPED_TRACE(kernel == AttentionKernel::hopper ? "hopper" : "plain");
      auto run = [&](bool parts) {
        const auto qp = q_proj.detach().requires_grad_(), qpe = q_pe_tokens.detach().requires_grad_(),
                   kvl = kv.detach().requires_grad_(), kpe = k_pe_shared.detach().requires_grad_();
        const auto q_nope = transpose(narrow(qp, 3, 0, c.dn), 1, 2), q_pe = transpose(qpe, 1, 2);
        const auto k_nope = transpose(narrow(kvl, 3, 0, c.dn), 1, 2), v = transpose(narrow(kvl, 3, c.dn, c.dv), 1, 2);
        const auto k_pe = expand(reshape(kpe, {c.B, 1, c.S, c.dr}), {c.B, c.H, c.S, c.dr});
        const auto out =
            parts ? fused_causal_attention_parts(q_nope, q_pe, k_nope, k_pe, v, 0.1, cu, kernel, kernel)
                  : fused_causal_attention(cat(std::vector<Tensor<bf16>>{q_nope, q_pe}, -1),
                                           cat(std::vector<Tensor<bf16>>{k_nope, k_pe}, -1), v, 0.1, cu, kernel,
                                           kernel);
        reshape(transpose(out, 1, 2), {c.B, c.S, c.H * c.dv}).backward(dy);
        return std::vector<std::vector<bf16>>{
            on_cpu(contiguous(out.detach())).to_vector(), on_cpu(qp.grad()).to_vector(), on_cpu(qpe.grad()).to_vector(),
            on_cpu(kvl.grad()).to_vector(), on_cpu(kpe.grad()).to_vector()};
      };
      KernelTrace trace;
      const auto got = run(true);
      EXPECT_EQ(trace.count("attention_forward"), 1);
      const auto want = run(false);
      const char* names[] = {"out", "d q_proj", "d q_pe", "d kv", "d k_pe"};
      for (std::size_t t = 0; t < 5; ++t) {
        ASSERT_EQ(got[t].size(), want[t].size());
        EXPECT_EQ(std::memcmp(got[t].data(), want[t].data(), got[t].size() * sizeof(bf16)), 0) << names[t];
      }
    }
  }
}

TEST(FusedAttentionCuda, Errors) {
  KILN_REQUIRE_GPU();
  const auto qf = on_gpu(randn<float>({1, 2, 8, 64})), kf = on_gpu(randn<float>({1, 2, 8, 64}));
  EXPECT_KILN_ERROR(fused_causal_attention(qf, kf, kf, 1.0), "fused_causal_attention", "float32", "CUDA takes bf16");
  const auto qh = on_gpu(randn<fp16>({1, 2, 8, 64}));
  EXPECT_KILN_ERROR(fused_causal_attention(qh, qh, qh, 1.0), "fused_causal_attention", "float16", "CUDA takes bf16");
  const auto q = on_gpu(randn<bf16>({1, 2, 8, 40})), v = on_gpu(randn<bf16>({1, 2, 8, 32}));
  EXPECT_KILN_ERROR(fused_causal_attention(q, q, v, 1.0), "fused_causal_attention", "dk 40", "dv 32");
  const auto q48 = on_gpu(randn<bf16>({1, 1, 8, 48})), v32 = on_gpu(randn<bf16>({1, 1, 8, 32}));
  EXPECT_KILN_ERROR(fused_causal_attention(q48, q48, v32, 1.0, Tensor<std::int64_t>(), kernels::AttentionKernel::hopper),
                    "fused_causal_attention", "Hopper kernel needs", "dk 48");
  {
    const auto q48g = clone(q48).requires_grad_();
    const auto out = fused_causal_attention(q48g, q48, v32, 1.0, Tensor<std::int64_t>(), kernels::AttentionKernel::plain,
                                            kernels::AttentionKernel::hopper);
    EXPECT_KILN_ERROR(out.backward(ones_like(out)), "fused_causal_attention backward", "Hopper backward needs",
                      "dk 48");
  }
  EXPECT_FALSE(fused_attention_on_device<float>(gpu, 64, 64));
  EXPECT_FALSE(fused_attention_on_device<fp16>(gpu, 64, 64));
  EXPECT_FALSE(fused_attention_on_device<bf16>(gpu, 40, 32));
  EXPECT_TRUE(fused_attention_on_device<bf16>(gpu, 192, 128));
  EXPECT_TRUE(fused_attention_on_device<float>(Device::cpu(), 40, 32));
}
