// A generated completion, and how one grows token by token on the host: the engine
// (infer/engine.hpp) reads each step's sampled tokens once and hands every active sample its
// token; CompletionBuilder appends it, decodes its text and decides whether the sample is done.
//
// Finish rules, checked in this order for each new token:
//   eos          the token is one of the eos ids: it ends the completion and stays its last token;
//                its text is not added.
//   stop_string  with a tokenizer, the decoded text now contains a stop string: the text is cut
//                right after the (earliest-ending) stop string, which stays in it; the tokens end
//                with the token that completed it (whose bytes may run past the cut).
//   length       max_new_tokens tokens have been generated.
// Text is built from the tokens' bytes (Tokenizer::token_bytes), so a stop string is found even
// when it spans several tokens; only the bytes that a new token can complete are searched (the
// new bytes and the longest stop string's length − 1 before them), so a step costs O(new bytes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/data/tokenizer.hpp"
#include "kiln/infer/sampling_params.hpp"

namespace kiln::infer {

enum class FinishReason { eos, stop_string, length };

inline const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::eos: return "eos";
    case FinishReason::stop_string: return "stop_string";
    case FinishReason::length: return "length";
  }
  return "?";
}

struct Completion {
  std::int64_t prompt = 0;           // index of its prompt
  std::int64_t sample = 0;           // index within its prompt's group, 0..G−1
  std::uint64_t sample_id = 0;       // the id its draws were keyed with: base + prompt·G + sample
  std::vector<std::int64_t> tokens;  // the generated tokens (an ending eos included)
  FinishReason finish = FinishReason::length;
  std::string text;                  // with a tokenizer: the decoded completion (eos excluded; cut
                                     // right after a stop string)
};

class CompletionBuilder {
 public:
  // `params` and `tokenizer` (may be null) must outlive the builder.
  CompletionBuilder(Completion completion, const SamplingParams& params, const data::Tokenizer* tokenizer)
      : c_(std::move(completion)), params_(&params), tokenizer_(tokenizer) {
    for (const std::string& s : params.stop_strings) longest_stop_ = std::max(longest_stop_, s.size());
    c_.tokens.reserve(static_cast<std::size_t>(params.max_new_tokens));
  }

  // Appends the next generated token; returns true when it finishes the completion. Appending to
  // a finished completion is an error.
  bool append(std::int64_t token) {
    check(!done_, "CompletionBuilder", "sample ", c_.sample_id, " is already finished (",
          finish_reason_name(c_.finish), ")");
    c_.tokens.push_back(token);
    const auto& eos = params_->eos_token_ids;
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) return finish(FinishReason::eos);
    if (tokenizer_) {
      const std::size_t before = c_.text.size();
      // Ids past the tokenizer's vocabulary (a model vocabulary padded beyond it) have no text.
      if (token >= 0 && token < tokenizer_->vocab_size()) c_.text += tokenizer_->token_bytes(token);
      if (longest_stop_ > 0 && c_.text.size() > before) {
        const std::size_t from = before >= longest_stop_ - 1 ? before - (longest_stop_ - 1) : 0;
        std::size_t end = std::string::npos;
        for (const std::string& s : params_->stop_strings) {
          const std::size_t at = c_.text.find(s, from);
          if (at != std::string::npos) end = std::min(end, at + s.size());
        }
        if (end != std::string::npos) {
          c_.text.resize(end);
          return finish(FinishReason::stop_string);
        }
      }
    }
    if (static_cast<std::int64_t>(c_.tokens.size()) >= params_->max_new_tokens) return finish(FinishReason::length);
    return false;
  }

  bool done() const { return done_; }
  const Completion& completion() const { return c_; }
  Completion take() { return std::move(c_); }

 private:
  bool finish(FinishReason r) {
    c_.finish = r;
    done_ = true;
    return true;
  }

  Completion c_;
  const SamplingParams* params_;
  const data::Tokenizer* tokenizer_;
  std::size_t longest_stop_ = 0;
  bool done_ = false;
};

}  // namespace kiln::infer
