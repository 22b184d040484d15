// One step of MTP speculative decoding (the engine's options.speculative; infer/engine.hpp drives
// it, nn/deepseek_v3.hpp's decode_with_hidden and mtp_decode compute it).
//
// Each decoding sample holds its newest token x at position p and a draft d for position p + 1,
// made by the MTP module. A step feeds both to the main model at once (a two-token decode) and
// draws, with the engine's sampler, y1 at p + 1 and y2 at p + 2, each with its own noise key
// (sample id, position) — the draws plain decoding makes there:
//   y1 comes from the logits after x: plain decoding's logits at p, whatever d is (query p does
//      not attend to the row d wrote);
//   y2 comes from the logits after [x, d]: plain decoding's at p + 1 exactly when d = y1.
// So the step emits y1, and y2 too when y1 = d (the draft is ACCEPTED): 1 or 2 tokens, and always
// the tokens plain decoding draws with the same seed. A rejected draft's cache rows (position
// p + 1, in every layer, the MTP block's too) are written again by the next step before any query
// reads them.
//
// In the same step the MTP module drafts the next token, from the main model's hidden states of
// this step and the tokens just drawn: at p (h_p with y1) it predicts position p + 2, the next
// draft when d is rejected; at p + 1 (h_{p+1} with y2) it predicts p + 3, the next draft when d is
// accepted. Both are drawn, and the host keeps the one the verdict asks for. A draft is drawn
// with the same noise key as the target token of its position will be (Gumbel-max: the same
// noise on other logits), so when the module's distribution matches the main model's the two
// draws agree, and they agree more often the closer the distributions are (a draft with noise of
// its own would agree with probability sum_i p_i q_i only).
//
// All of it is device work on one packed index tensor that the host fills before the step (it
// knows every value: the tokens it read, positions, slots, sample ids), and one packed result
// that the host reads once: [y1, y2] and both drafts per row.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/infer/kv_cache.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/view.hpp"

namespace kiln::infer {

// The rows of a speculative step: what the host knows of each decoding sample.
struct SpeculativeRow {
  std::int64_t token;      // its newest token x
  std::int64_t draft;      // the draft for the position after it
  std::int64_t position;   // x's position p
  std::int64_t slot;       // its cache sequence
  std::int64_t sample_id;  // its draws' key
};

// The device views of a step's packed index tensor ([11 · rows] int64; SpeculativeIndex::pack).
struct SpeculativeIndex {
  Tensor<std::int64_t> ids;               // [rows, 2]: x and d
  DecodeIndex index;                      // slots, positions p, lengths p + 2; two tokens a row
  Tensor<std::int64_t> draw_ids;          // [2 · rows]: each row's sample id, twice
  Tensor<std::int64_t> target_positions;  // [2 · rows]: p + 1, p + 2 (where y1 and y2 are drawn)
  Tensor<std::int64_t> draft_positions;   // [2 · rows]: p + 2, p + 3 (the two drafts' positions)

  static constexpr std::int64_t fields = 11;  // int64 values per row

  // The host side: `rows` first, then padding up to rows_n (token and draft 0 at position 0 of
  // `spare_slot`, sample id 0), laid out as view() reads it.
  static std::vector<std::int64_t> pack(const std::vector<SpeculativeRow>& rows, std::int64_t rows_n,
                                        std::int64_t spare_slot) {
    const auto n = static_cast<std::size_t>(rows_n);
    std::vector<std::int64_t> v(fields * n, 0);
    std::int64_t* ids = v.data();
    std::int64_t* positions = ids + 2 * n;
    std::int64_t* lengths = positions + n;
    std::int64_t* slots = lengths + n;
    std::int64_t* draw_ids = slots + n;
    std::int64_t* targets = draw_ids + 2 * n;
    std::int64_t* drafts = targets + 2 * n;
    for (std::size_t r = 0; r < n; ++r) {
      const bool real = r < rows.size();
      const SpeculativeRow row = real ? rows[r] : SpeculativeRow{0, 0, 0, spare_slot, 0};
      ids[2 * r] = row.token;
      ids[2 * r + 1] = row.draft;
      positions[r] = row.position;
      lengths[r] = row.position + 2;
      slots[r] = row.slot;
      for (std::size_t t = 0; t < 2; ++t) {
        draw_ids[2 * r + t] = row.sample_id;
        targets[2 * r + t] = row.position + 1 + static_cast<std::int64_t>(t);
        drafts[2 * r + t] = row.position + 2 + static_cast<std::int64_t>(t);
      }
    }
    return v;
  }

  // Views of a packed tensor [fields · rows_n] on the device.
  static SpeculativeIndex view(const Tensor<std::int64_t>& packed, std::int64_t rows_n) {
    std::int64_t at = 0;
    const auto part = [&](std::int64_t size) {
      const Tensor<std::int64_t> t = narrow(packed, 0, at, size);
      at += size;
      return t;
    };
    SpeculativeIndex s;
    s.ids = reshape(part(2 * rows_n), {rows_n, 2});
    const Tensor<std::int64_t> positions = part(rows_n), lengths = part(rows_n), slots = part(rows_n);
    s.index = DecodeIndex{slots, positions, lengths, 2};
    s.draw_ids = part(2 * rows_n);
    s.target_positions = part(2 * rows_n);
    s.draft_positions = part(2 * rows_n);
    return s;
  }
};

// What a speculative step leaves on the device.
template <class T>
struct SpeculativeDraws {
  Tensor<std::int64_t> tokens;  // [4 · rows]: y1, y2 of each row, then its drafts for p + 2 and p + 3
  Tensor<T> logits;             // the main model's logits [rows, 2, vocab] (y1's and y2's)
};

// One speculative step on the device (see the file comment): model.decode_with_hidden over
// [x, d], the target draws, model.mtp_decode at p and p + 1 over [y1, y2], the drafts. `draw` is
// the engine's sampler: (logits [k, vocab], sample ids [k], positions [k]) -> tokens [k].
template <class T, class Model, class Cache, class Draw>
SpeculativeDraws<T> speculative_step(const Model& model, const SpeculativeIndex& s, Cache& cache, const Draw& draw) {
  const std::int64_t n = s.index.size();
  const auto main = model.decode_with_hidden(s.ids, s.index, cache);  // [n, 2, vocab], [n, 2, hidden]
  const Tensor<std::int64_t> drawn = draw(reshape(main.logits, {2 * n, -1}), s.draw_ids, s.target_positions);
  const Tensor<T> draft_logits = model.mtp_decode(main.hidden, drawn, s.index, cache);  // [n, 2, vocab]
  const Tensor<std::int64_t> drafts = draw(reshape(draft_logits, {2 * n, -1}), s.draw_ids, s.draft_positions);
  return {cat(std::vector<Tensor<std::int64_t>>{drawn, drafts}), main.logits};
}

}  // namespace kiln::infer
