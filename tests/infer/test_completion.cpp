// How a completion grows on the host (infer/completion.hpp), on hand-built token sequences: eos
// (kept as the last token, not in the text), stop strings within one token and across tokens (the
// text cut right after the earliest-ending one), the length limit, and SamplingParams' checks.
#include <kiln/infer/completion.hpp>

#include <string>
#include <vector>

#include "test_util.hpp"

using namespace kiln;
using infer::CompletionBuilder;
using infer::FinishReason;

namespace {

// Feeds tokens until the builder says done; returns how many it took.
std::size_t feed(CompletionBuilder& b, const std::vector<std::int64_t>& tokens) {
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (b.append(tokens[i])) return i + 1;
  return tokens.size();
}

std::vector<std::int64_t> bytes(const std::string& s) {
  std::vector<std::int64_t> out;
  for (const char c : s) out.push_back(static_cast<unsigned char>(c));
  return out;
}

}  // namespace

TEST(Completion, EosEndsAndStaysOutOfTheText) {
  const data::Tokenizer tok;
  const std::int64_t eos = tok.eos_id().value();
  infer::SamplingParams p;
  p.max_new_tokens = 10;
  p.eos_token_ids = {eos};
  CompletionBuilder b({}, p, &tok);
  std::vector<std::int64_t> t = bytes("42");
  t.push_back(eos);
  t.push_back('x');
  EXPECT_EQ(feed(b, t), 3u);
  EXPECT_EQ(b.completion().finish, FinishReason::eos);
  EXPECT_EQ(b.completion().tokens, (std::vector<std::int64_t>{'4', '2', eos}));
  EXPECT_EQ(b.completion().text, "42");
  EXPECT_KILN_ERROR(b.append('y'), "CompletionBuilder", "already finished (eos)");
}

TEST(Completion, StopStringIsKeptAndTheTextCutAfterIt) {
  const data::Tokenizer tok;
  infer::SamplingParams p;
  p.max_new_tokens = 40;
  p.stop_strings = {"</answer>"};
  // "</answer>" as the special token itself, followed by more text in the same step's token.
  {
    CompletionBuilder b({}, p, &tok);
    const std::vector<std::int64_t> t = tok.encode("<answer>12</answer>\nmore");
    EXPECT_EQ(feed(b, t), tok.encode("<answer>12</answer>").size());
    EXPECT_EQ(b.completion().finish, FinishReason::stop_string);
    EXPECT_EQ(b.completion().text, "<answer>12</answer>");
  }
  // Spelled out byte by byte: found when its last byte arrives.
  {
    CompletionBuilder b({}, p, &tok);
    const std::vector<std::int64_t> t = bytes("x </answer> y");
    EXPECT_EQ(feed(b, t), 11u);
    EXPECT_EQ(b.completion().text, "x </answer>");
    EXPECT_EQ(b.completion().tokens.size(), 11u);
  }
  // A token whose bytes run past the stop string: the tokens keep it, the text is cut.
  {
    infer::SamplingParams q = p;
    q.stop_strings = {"b\n", "zz"};
    CompletionBuilder b({}, q, &tok);
    const std::int64_t answer = tok.token_id("<answer>").value();
    EXPECT_EQ(feed(b, {'a', 'b', '\n', answer, 'z'}), 3u);
    EXPECT_EQ(b.completion().text, "ab\n");
    EXPECT_EQ(b.completion().finish, FinishReason::stop_string);
  }
  // Of two stop strings completed by one token, the text is cut after the one that ends first.
  {
    infer::SamplingParams q = p;
    q.stop_strings = {"r>", "swe"};
    CompletionBuilder b({}, q, &tok);
    const std::int64_t answer = tok.token_id("<answer>").value();
    EXPECT_EQ(feed(b, {'-', answer, 'k'}), 2u);
    EXPECT_EQ(b.completion().text, "-<answe");
  }
}

TEST(Completion, LengthLimitAndNoTokenizer) {
  infer::SamplingParams p;
  p.max_new_tokens = 3;
  p.eos_token_ids = {9};
  CompletionBuilder b({}, p, nullptr);
  EXPECT_EQ(feed(b, {1, 2, 3, 9}), 3u);
  EXPECT_EQ(b.completion().finish, FinishReason::length);
  EXPECT_EQ(b.completion().text, "");
  // eos on the last allowed token counts as eos.
  CompletionBuilder c({}, p, nullptr);
  EXPECT_EQ(feed(c, {1, 2, 9}), 3u);
  EXPECT_EQ(c.completion().finish, FinishReason::eos);
  EXPECT_STREQ(infer::finish_reason_name(FinishReason::stop_string), "stop_string");
}

TEST(Completion, SamplingParamsChecks) {
  infer::SamplingParams p;
  EXPECT_NO_THROW(p.check("op", 10, false));
  p.greedy = true;
  p.temperature = -1.0;  // greedy ignores the temperature
  EXPECT_NO_THROW(p.check("op", 10, false));
  EXPECT_EQ(p.sampling_options().temperature, 0.0);
  p = {};
  p.top_p = 1.5;
  EXPECT_KILN_ERROR(p.check("op", 10, false), "op", "top_p");
  p = {};
  p.max_new_tokens = -3;
  EXPECT_KILN_ERROR(p.check("op", 10, false), "op", "max_new_tokens", "-3");
  p = {};
  p.eos_token_ids = {10};
  EXPECT_KILN_ERROR(p.check("op", 10, false), "op", "eos token id 10");
  p = {};
  p.stop_strings = {""};
  EXPECT_KILN_ERROR(p.check("op", 10, true), "op", "empty");
}
