// Arguments of the fused causal attention kernels (kernels/attention/; front-end
// ops/attention.hpp, which states the function; CPU reference backend/cpu/attention.hpp).
//
// Layouts: q [B, H, S, dk], k [B, Hkv, S, dk], v [B, Hkv, S, dv], out and its gradient
// [B, H, S, dv]; query head h reads kv head h / (H / Hkv). q, k, v, out and dout may lie in
// memory with any batch, head and row strides (HeadLayout; each row's d elements contiguous),
// e.g. a [B, S, H, d] tensor seen as [B, H, S, d], or the v columns of a wider per-head
// projection, so that the front-end passes views without copying them; the backward writes dq,
// dk and dv through such layouts too (where the front-end wants each gradient: where its input
// lay); lse and delta are contiguous. Query i attends keys seq_begin[i] .. i (seq_begin null: 0, one sequence a batch
// row); seq_end[i] is one past the last token of i's sequence (null: S). Packed sequences are
// B = 1 with these arrays.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::kernels {

struct AttentionShapeArgs {
  std::int64_t batch = 0, seq = 0;
  int heads = 1, kv_heads = 1, dk = 0, dv = 0;
  double scale = 1.0;
  const std::int32_t* seq_begin = nullptr;  // [seq] or null
  const std::int32_t* seq_end = nullptr;    // [seq] or null
};

// Where element (b, h, i, c) of a [B, H, S, d] operand lies: b·batch + h·head + i·row + c
// elements from its pointer. Every stride a multiple of 8 elements (16 bytes: the kernels copy
// rows in 16-byte pieces, and TMA wants 16-byte strides) and the pointer 16-byte aligned; the
// front-end copies operands that are not. row == 0 (the default) means contiguous:
// {H·S·d, S·d, d}.
struct HeadLayout {
  std::int64_t batch = 0, head = 0, row = 0;
};

// The layout itself, or the contiguous one when it is the default.
inline HeadLayout resolved_layout(HeadLayout l, std::int64_t heads, std::int64_t seq, std::int64_t d) {
  return l.row != 0 ? l : HeadLayout{heads * seq * d, seq * d, d};
}

// MLA's queries and keys in two parts (the kernels read them where the projections left them,
// instead of a concatenated copy): columns [dk − dim, dk) of q and k, the rotary part, come from
// q_rope and k_rope ([B, H, S, dim] and [B, Hkv, S, dim] in their layouts), the others from q and
// k, whose rows then hold dk − dim columns. k_rope's head stride may be 0: MLA's one rotary key
// shared by all heads. dim 0: no parts (q and k hold all dk columns). The kernels take
// dk − dim a multiple of 64 (the Hopper kernels' 64-column boxes; the op concatenates otherwise).
struct AttentionRopeParts {
  int dim = 0;
  const void* q_rope = nullptr;
  const void* k_rope = nullptr;
  HeadLayout q_layout, k_layout;  // default: contiguous
};

// Which kernel runs, for the forward (AttentionForwardArgs) and the backward (AttentionBackwardArgs)
// each: automatic (the Hopper kernel on sm_90 where its head dims allow, else the plain one), or
// one of them by name (tests, benchmarks).
enum class AttentionKernel { automatic, hopper, plain };

// out_i = Σ_j softmax_j(scale q_i·k_j) v_j over the keys i attends; lse_i = log Σ_j exp(scale q_i·k_j).
struct AttentionForwardArgs {
  static constexpr const char* kernel = "attention forward";
  static constexpr const char* header = "kiln/kernels/attention/attention.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;  // of q, k, v and out: bf16 (the only type compiled)
  AttentionShapeArgs shape;
  void* out = nullptr;
  float* lse = nullptr;  // [B, H, S]
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  HeadLayout q_layout, k_layout, v_layout, out_layout;  // default: contiguous
  AttentionRopeParts rope;                              // default: none
  AttentionKernel implementation = AttentionKernel::automatic;
  // Hopper forward: the two consumer warpgroups take turns issuing their products (ping-pong).
  // Off with KILN_ATTENTION_PINGPONG=off in the environment (comparisons).
  bool pingpong = true;
};

// dq, dk, dv from dout and the forward's out and lse (delta: a [B, H, S] float workspace for
// D_i = dout_i·out_i). Both backward kernels (plain, attention.cuh; Hopper,
// attention_backward_hopper.cuh) are deterministic: every gradient element is summed by one thread
// in a fixed order (no atomics), so two runs give the same bits.
struct AttentionBackwardArgs {
  static constexpr const char* kernel = "attention backward";
  static constexpr const char* header = "kiln/kernels/attention/attention.cuh";
  DeviceLaunch launch;
  DType dtype = DType::bf16;
  AttentionShapeArgs shape;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* delta = nullptr;  // [B, H, S] workspace
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  HeadLayout q_layout, k_layout, v_layout, out_layout, dout_layout;  // default: contiguous
  AttentionRopeParts rope;                                           // default: none
  // Where the gradients go: dq [B, H, S, dk], dk [B, Hkv, S, dk], dv [B, Hkv, S, dv] in these
  // layouts (default: contiguous), every row its own place (no stride-0 head). With rope parts
  // (rope.dim > 0) the rotary columns' gradients go to dq_rope [B, H, S, dim] and dk_rope
  // [B, Hkv, S, dim] (one per kv head, also where k_rope is one key shared by the heads: the
  // caller sums them), and dq's and dk's rows hold the dk − dim columns before them.
  HeadLayout dq_layout, dk_layout, dv_layout;
  void* dq_rope = nullptr;
  void* dk_rope = nullptr;
  HeadLayout dq_rope_layout, dk_rope_layout;
  AttentionKernel implementation = AttentionKernel::automatic;
  // Hopper dK/dV and dQ kernels: the two consumer warpgroups take turns issuing their products
  // (ping-pong). Off with KILN_ATTENTION_PINGPONG=off in the environment (comparisons).
  bool pingpong = true;
};

// The (dk, dv) head-dim pairs the CUDA kernels are compiled for; others get a kiln::Error from
// the op and the composed path from the nn modules.
inline bool attention_head_dims_supported(std::int64_t dk, std::int64_t dv) {
  return (dk == 48 && dv == 32) || (dk == 64 && dv == 64) || (dk == 96 && dv == 64) || (dk == 128 && dv == 128) ||
         (dk == 192 && dv == 128);
}

// What the Hopper forward (attention_hopper.cuh) takes: bf16, dk a
// multiple of 32 up to 256 (64-element chunks, the last possibly half used), dv 64 or 128 (one
// wgmma N).
constexpr bool attention_hopper_supports(DType dtype, std::int64_t dk, std::int64_t dv) {
  return dtype == DType::bf16 && dk % 32 == 0 && dk <= 256 && (dv == 64 || dv == 128);
}

// Whether a forward with these arguments runs the Hopper kernel on an sm_90 GPU (the launcher
// also checks the GPU): when named, or automatically from S = 1024 on, and from S = 512 on at the
// two head-dim pairs measured there: (192, 128) and (96, 64), the big config's (158-176 TFLOP/s
// against 128-144 for the plain kernel, H100, three calls; docs/mla.md). The (96, 64) choice
// waited for a loss question: 600-step pretrain runs on the Hopper forward had ended above the
// plain one's at seeds 1-3 (2026-12-06; seed 1 reproduced bit for bit on 2026-12-07: 0.4512
// against 0.4006) and ended below them at seeds 4-6 (0.4160, 0.4075, 0.3989 against 0.4204,
// 0.4109, 0.4172): three seeds each way, so no sign of a kernel fault, which the tests (both
// kernels against the CPU in double, same bounds) would catch. Other head dims below S 1024 keep
// the plain kernel: not measured there.
constexpr bool attention_hopper_wanted(AttentionKernel implementation, DType dtype, std::int64_t dk, std::int64_t dv,
                                       std::int64_t seq) {
  const bool automatic_hopper = seq >= 1024 || (seq >= 512 && (dk >= 192 || (dk == 96 && dv == 64)));
  const bool wanted = implementation == AttentionKernel::hopper ||
                      (implementation == AttentionKernel::automatic && automatic_hopper);
  return attention_hopper_supports(dtype, dk, dv) && wanted;
}

// What the Hopper backward (attention_backward_hopper.cuh) takes: bf16, dk a multiple of 32 up to
// 192 (its dK and dQ accumulators take 32 registers a thread per 64 columns), dv 64 or 128. The
// automatic choice runs it on sm_90 wherever it applies (the launcher checks the GPU).
constexpr bool attention_hopper_backward_supports(DType dtype, std::int64_t dk, std::int64_t dv) {
  return dtype == DType::bf16 && dk % 32 == 0 && dk > 0 && dk <= 192 && (dv == 64 || dv == 128);
}

}  // namespace kiln::kernels
