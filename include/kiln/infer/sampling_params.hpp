// What to draw and when to stop: the sampling parameters of the generation engine
// (infer/engine.hpp).
//
// Drawing is ops/sampling.hpp's sample_tokens: temperature, then top-k, then top-p (Hugging
// Face's order), then a Gumbel-max draw whose noise is a pure function of (seed, sample id,
// position, token) — so a sample's tokens depend on the seed, its sample id and its logits only,
// never on the batch it is decoded in. greedy (or temperature 0) takes the argmax.
//
// Stopping, per sample: an eos token (any of eos_token_ids; it is kept as the completion's last
// token), a stop string appearing in the decoded text (matched as the text grows; needs a
// tokenizer), or max_new_tokens generated, whichever comes first.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/ops/sampling.hpp"

namespace kiln::infer {

struct SamplingParams {
  double temperature = 1.0;   // softmax temperature, >= 0 (0: greedy)
  std::int64_t top_k = 0;     // keep the k most likely tokens (0: off)
  double top_p = 1.0;         // keep the most likely tokens whose mass reaches p, in (0, 1] (1: off)
  bool greedy = false;        // argmax decoding, whatever the temperature
  std::int64_t max_new_tokens = 256;          // tokens generated per sample at most, > 0
  std::vector<std::int64_t> eos_token_ids;    // tokens that end a sample (kept as its last token)
  std::vector<std::string> stop_strings;      // texts that end a sample (kept; the text is cut after them)
  std::uint64_t seed = 0;                     // with the sample ids, decides every draw

  // The options of sample_tokens.
  SamplingOptions sampling_options() const { return {greedy ? 0.0 : temperature, top_k, top_p, seed}; }

  // Throws kiln::Error (naming `op`) unless these parameters are usable with a model of `vocab`
  // tokens (and a tokenizer when there are stop strings).
  void check(const char* op, std::int64_t vocab, bool has_tokenizer) const {
    check_sampling_options(op, sampling_options());
    kiln::check(max_new_tokens > 0, op, "max_new_tokens must be positive, got ", max_new_tokens);
    for (const std::int64_t id : eos_token_ids)
      kiln::check(id >= 0 && id < vocab, op, "eos token id ", id, " is outside the vocabulary [0, ", vocab, ")");
    for (const std::string& s : stop_strings) kiln::check(!s.empty(), op, "stop strings must not be empty");
    kiln::check(stop_strings.empty() || has_tokenizer, op, "stop strings (", stop_strings.size(),
                ") are matched on decoded text: they need a tokenizer");
  }
};

}  // namespace kiln::infer
