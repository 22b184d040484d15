// Causal scaled-dot-product attention built from kiln ops, shared by Llama attention and MLA:
//   P = softmax(scale · Q·Kᵀ + M),  out = P·V,   M[i, j] = -inf where key j lies after query i.
// Queries are the last Sq of the Sk key positions (Sq = Sk for a full sequence; Sq < Sk when the
// queries continue earlier keys), so query i sits at key index Sk - Sq + i and sees keys 0..that.
// The mask compares indices, not rope positions: positions only rotate queries and keys.
//
// Where a fused kernel exists (ops/attention.hpp: CUDA, bf16, the compiled head dims) the
// modules call fused_causal_attention instead: the same function without the S x S scores in
// memory. attention_path() picks between the two process-wide (benchmarks compare them).
//
// Packed rows (sequence packing for SFT, distill/sft.hpp): several sequences end to end in one
// row, B = 1, with cu_seqlens [n + 1] marking where each begins (0 = c_0 < ... < c_n = S). Token i
// of sequence [c_s, c_{s+1}) then sees keys c_s..i only: the causal mask becomes block-diagonal,
// and rope positions restart at 0 in each sequence (packed_positions), so a packed sequence
// computes exactly what it computes alone. The fused kernels take cu_seqlens directly; the
// composed path masks the [S, S] scores (packed_causal_mask), which costs S² rather than Σ L².
//
// Also here, for both decoders (nn/llama.hpp, nn/deepseek_v3.hpp): the per-forward context of the
// attention layers (rope tables placed on the device of the tensors they rotate, built once per
// forward pass and shared by every layer, and the packing); checks of ids and positions.
// (Generation's preallocated caches: infer/kv_cache.hpp.)
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kiln/ops/attention.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/matmul.hpp"
#include "kiln/ops/rope.hpp"
#include "kiln/ops/softmax.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/ops/where.hpp"

namespace kiln::nn {

// Which path the attention modules take where the fused kernel exists: fused (the default) or
// the composed ops (the reference, and the benchmarks' "before"). On the CPU the modules always
// compose (the fused CPU op is a float64-accumulating reference, not a fast path).
enum class AttentionPath { fused, composed };

inline AttentionPath& attention_path() {
  static AttentionPath path = AttentionPath::fused;
  return path;
}

// Sets attention_path() for the lifetime of the scope, then restores it (tests compare the paths).
class AttentionPathScope {
 public:
  explicit AttentionPathScope(AttentionPath path) : saved_(attention_path()) { attention_path() = path; }
  ~AttentionPathScope() { attention_path() = saved_; }
  AttentionPathScope(const AttentionPathScope&) = delete;
  AttentionPathScope& operator=(const AttentionPathScope&) = delete;

 private:
  AttentionPath saved_;
};

// Whether a module attending with head dims (dk, dv) in T on `device` takes the fused kernel.
template <class T>
bool use_fused_attention(Device device, std::int64_t dk, std::int64_t dv) {
  return !device.is_cpu() && attention_path() == AttentionPath::fused && fused_attention_on_device<T>(device, dk, dv);
}

// What every attention layer of one forward pass shares: the rope tables of the tokens'
// positions and, for a packed row, where its sequences begin. Converts from plain rope tables
// (one sequence per row).
template <class C>
struct AttentionContext : RopeTables<C> {
  AttentionContext() = default;
  AttentionContext(RopeTables<C> tables, Tensor<std::int64_t> cu_seqlens_ = Tensor<std::int64_t>())  // NOLINT: implicit
      : RopeTables<C>(std::move(tables)), cu_seqlens(std::move(cu_seqlens_)) {}

  Tensor<std::int64_t> cu_seqlens;  // [n + 1] int64 on the CPU; undefined: every row is one sequence
  bool packed() const { return cu_seqlens.defined(); }
};

// Rope positions of a packed row: 0, 1, ... restarting at each sequence's first token -> [1, S].
inline Tensor<std::int64_t> packed_positions(const Tensor<std::int64_t>& cu_seqlens) {
  check_defined("packed_positions", cu_seqlens);
  check(cu_seqlens.device().is_cpu() && cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 2, "packed_positions",
        "cu_seqlens must be a CPU tensor [n + 1] with n >= 1 sequences, got shape ", cu_seqlens.shape(), " on ",
        cu_seqlens.device());
  const std::int64_t S = cu_seqlens.to_vector().back();
  const PackedSequences seqs = packed_sequences("packed_positions", cu_seqlens, S);
  std::vector<std::int64_t> pos(static_cast<std::size_t>(S));
  for (std::int64_t i = 0; i < S; ++i) pos[static_cast<std::size_t>(i)] = i - seqs.begin[static_cast<std::size_t>(i)];
  return Tensor<std::int64_t>::from_vector(pos, {1, S});
}

// [S, S], true where key j is hidden from query i of a packed row: j after i, or j in an earlier
// sequence (j before the first token of i's sequence).
inline Tensor<bool> packed_causal_mask(const Tensor<std::int64_t>& cu_seqlens, std::int64_t S,
                                       Device device = Device::cpu()) {
  const PackedSequences seqs = packed_sequences("packed_causal_mask", cu_seqlens, S);
  const auto n = static_cast<double>(S);
  const Tensor<std::int64_t> keys = reshape(arange<std::int64_t>(0.0, n, 1.0, device), {1, S});
  const Tensor<std::int64_t> queries = reshape(arange<std::int64_t>(0.0, n, 1.0, device), {S, 1});
  const Tensor<std::int64_t> starts = to(Tensor<std::int64_t>::from_vector(seqs.begin, {S, 1}), device);
  return logical_or(gt(keys, queries), lt(keys, starts));
}

// [q_len, k_len], true where key j is in the future of query i (j > k_len - q_len + i).
inline Tensor<bool> causal_mask(std::int64_t q_len, std::int64_t k_len, Device device = Device::cpu()) {
  check(q_len >= 0 && q_len <= k_len, "causal_mask", "need 0 <= q_len <= k_len, got q_len ", q_len, ", k_len ",
        k_len);
  const auto k = static_cast<double>(k_len), q = static_cast<double>(q_len);
  const Tensor<std::int64_t> keys = reshape(arange<std::int64_t>(0.0, k, 1.0, device), {1, k_len});
  const Tensor<std::int64_t> queries = reshape(arange<std::int64_t>(k - q, k, 1.0, device), {q_len, 1});
  return gt(keys, queries);
}

// softmax(scale · scores) over the last dim with future keys masked out; scores [..., Sq, Sk].
// Every row keeps at least key 0 (with cu_seqlens: its sequence's first key), so no row is all
// -inf; masked entries get probability 0 and no gradient. cu_seqlens (a packed row, Sq = Sk) also
// hides the keys of other sequences.
//
// On a device it is the composed ops: softmax(masked_fill(mul(scores, scale), mask, -inf)). On the
// CPU one fused pass (backend/cpu/softmax.hpp, causal_softmax_forward and _backward) reads and
// exponentiates only each row's visible keys and gives the composed ops' bits exactly (the hidden
// keys' terms there are exp(-inf) = 0, which change neither the max nor the running sum), without
// the mask, the scaled copy and the masked copy: the CPU's training runs the composed attention,
// and these S x S passes were about a sixth of its time.
template <class T>
Tensor<T> causal_softmax(const Tensor<T>& scores, double scale,
                         const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
  const char* op = "causal_softmax";
  check_defined(op, scores);
  check(scores.dim() >= 2, op, "scores must be [..., Sq, Sk], got shape ", scores.shape());
  check(!cu_seqlens.defined() || scores.size(-2) == scores.size(-1), op,
        "packed sequences need Sq = Sk, got scores of shape ", scores.shape());
  const std::int64_t Sq = scores.size(-2), Sk = scores.size(-1);
  if (!scores.device().is_cpu()) {
    const Tensor<bool> mask = cu_seqlens.defined() ? packed_causal_mask(cu_seqlens, Sk, scores.device())
                                                   : causal_mask(Sq, Sk, scores.device());
    return softmax(masked_fill(mul(scores, scale), mask, -std::numeric_limits<double>::infinity()), -1);
  }
  check(Sq <= Sk, op, "need Sq <= Sk (queries are the last Sq of the Sk keys), got scores of shape ", scores.shape());
  std::vector<std::int64_t> begin;  // a packed row: the first key of each query's sequence
  if (cu_seqlens.defined()) begin = packed_sequences(op, cu_seqlens, Sk).begin;
  const Tensor<T> x = contiguous(scores.detach());
  Tensor<T> y(scores.shape(), scores.device());
  const T s = convert<T>(scale);  // mul(scores, scale) multiplies by the scale rounded to T
  const std::int64_t rows = Sk > 0 ? x.numel() / Sk : 0;
  cpu::causal_softmax_forward(x.data(), y.data(), cpu::CausalRows{rows, Sq, Sk, begin.empty() ? nullptr : begin.data()},
                              s);
  if (autograd::needs_grad(scores)) {
    autograd::record(y, op, [y_saved = y.detach(), begin, rows, Sq, Sk, s](const Tensor<T>& g,
                                                                           const autograd::InputGrads& in) {
      const Tensor<T> gc = contiguous(g);  // g may be any view (an expanded sum's gradient)
      Tensor<T> gx(y_saved.shape(), y_saved.device());
      cpu::causal_softmax_backward(gc.data(), y_saved.data(), gx.data(),
                                   cpu::CausalRows{rows, Sq, Sk, begin.empty() ? nullptr : begin.data()}, s);
      in.add(0, gx);
    }, scores);
  }
  return y;
}

// q [..., Sq, D], k [..., Sk, D], v [..., Sk, Dv] (leading dims broadcast, so a [B, Hkv, 1, Sk, D]
// key serves a group of query heads [B, Hkv, G, Sq, D]) -> [..., Sq, Dv].
// cu_seqlens: a packed row (causal_softmax).
template <class T>
Tensor<T> causal_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, double scale,
                           const Tensor<std::int64_t>& cu_seqlens = Tensor<std::int64_t>()) {
  check_defined("causal_attention", q, k, v);
  check(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2 && q.size(-1) == k.size(-1) && k.size(-2) == v.size(-2),
        "causal_attention", "q, k, v of shapes ", q.shape(), ", ", k.shape(), ", ", v.shape(),
        " do not fit [..., Sq, D], [..., Sk, D], [..., Sk, Dv]");
  return matmul(causal_softmax(matmul(q, transpose(k, -1, -2)), scale, cu_seqlens), v);
}

// Rope cos/sin tables for `positions` ([S] or [B, S]) and head dim `dim`, built on `device` (the
// device of the tensors they rotate; only the positions travel there), in compute_t<T>.
template <class T>
RopeTables<compute_t<T>> rope_tables_on(const Tensor<std::int64_t>& positions, std::int64_t dim, double theta,
                                        Device device) {
  check_defined("rope_tables", positions);
  return rope_tables<compute_t<T>>(to(positions, device), dim, theta);
}

// Checks that positions fit a batch of B sequences of S tokens: [S] (shared) or [B, S].
inline void check_positions(const char* op, const Tensor<std::int64_t>& positions, std::int64_t B, std::int64_t S) {
  check_defined(op, positions);
  check(positions.shape() == Shape{S} || positions.shape() == Shape{B, S}, op, "positions of shape ",
        positions.shape(), " fit neither [S] nor [B, S] for a batch of shape [B, S] = [", B, ", ", S, "]");
}

// Checks that ids are a batch of token sequences [B, S]; returns S.
inline std::int64_t check_ids(const char* op, const Tensor<std::int64_t>& ids) {
  check_defined(op, ids);
  check(ids.dim() == 2, op, "ids must be [B, S], got shape ", ids.shape());
  return ids.size(1);
}

// Rope tables for a decode step, one new token per row: positions [n] -> tables [n, 1, dim/2],
// which rotate x [n, 1, heads, dim] row by row. With positions already on `device` nothing is
// copied, and on a GPU a kernel builds the tables from them: the host never reads the positions.
template <class T>
RopeTables<compute_t<T>> decode_rope_tables(const Tensor<std::int64_t>& positions, std::int64_t dim, double theta,
                                            Device device) {
  check_defined("decode_rope_tables", positions);
  check(positions.dim() == 1, "decode_rope_tables", "positions must be [n], got shape ", positions.shape());
  return rope_tables_on<T>(reshape(positions, {positions.size(0), 1}), dim, theta, device);
}

// Rope tables for a decode step of `tokens` new tokens per row at positions[a] .. + tokens − 1:
// positions [n] -> tables [n, tokens, dim/2] (tokens = 1: decode_rope_tables), built on the
// device from the device positions (no host read).
template <class T>
RopeTables<compute_t<T>> decode_rope_tables(const Tensor<std::int64_t>& positions, std::int64_t tokens,
                                            std::int64_t dim, double theta, Device device) {
  check_defined("decode_rope_tables", positions);
  check(positions.dim() == 1 && tokens >= 1, "decode_rope_tables", "positions must be [n] and tokens >= 1, got shape ",
        positions.shape(), " and ", tokens);
  if (tokens == 1) return decode_rope_tables<T>(positions, dim, theta, device);
  // positions[a] + t as [n, tokens], on the positions' device: in double (exact below 2^53) because
  // the device elementwise kernels are floating-point only. Each column is a scalar add on the
  // device (a host-built offsets tensor would be a host-to-device copy, which a decode step
  // captured into a CUDA graph must not make).
  const Tensor<double> first = reshape(cast<double>(positions), {positions.size(0), 1});
  std::vector<Tensor<double>> columns{first};
  for (std::int64_t t = 1; t < tokens; ++t) columns.push_back(add(first, static_cast<double>(t)));
  return rope_tables_on<T>(cast<std::int64_t>(cat(columns, 1)), dim, theta, device);
}

// Positions first, first + 1, ..., first + n - 1 (a host tensor [n]).
inline Tensor<std::int64_t> positions_from(std::int64_t first, std::int64_t n) {
  return arange<std::int64_t>(static_cast<double>(first), static_cast<double>(first + n));
}

}  // namespace kiln::nn
