// Rejection sampling of distillation traces (distill/traces.hpp): the JSON Lines round trip (text
// with newlines, quotes and invalid UTF-8), every malformed record reported with its file and line
// number, the filter on crafted completions of real problems with exact counts for each reason,
// and rejection_sample end to end: on a Llama whose weights are set by hand to write one fixed
// completion (so the counts are known exactly), and on a random one (whatever it keeps passes the
// filters again, and a fixed seed gives the same result whatever the wave size).
#include <kiln/distill/traces.hpp>
#include <kiln/nn/llama.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "file_test_util.hpp"
#include "test_util.hpp"

using namespace kiln;
using distill::Candidate;
using distill::RejectionOptions;
using distill::RejectionStats;
using distill::Trace;

// Outside the anonymous namespace: the tests derive from it (-Wsubobject-linkage in the unity build).
class DistillTracesJsonl : public kiln::testing::TempDirTest {};

namespace {

data::Problem arithmetic(std::int64_t a, char op, std::int64_t b) {
  data::Problem p;
  p.kind = data::TaskKind::arithmetic;
  p.numbers = {a, b};
  p.op = op;
  p.target = op == '+' ? a + b : op == '-' ? a - b : a * b;
  p.solution = std::to_string(p.target);
  return p;
}

// A record as write_traces writes it, for files edited by hand.
const std::string kGoodLine =
    R"({"completion":"<think></think><answer>7</answer>","problem":"arithmetic 3 + 4","prompt":"Arithmetic: compute 3 + 4.\n","reward":1.0,"seed":7,"source":"teacher"})";

void expect_same(const std::vector<Trace>& a, const std::vector<Trace>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].completion, b[i].completion);
    EXPECT_EQ(a[i].reward, b[i].reward);
    EXPECT_EQ(a[i].source, b[i].source);
    EXPECT_EQ(a[i].seed, b[i].seed);
    EXPECT_EQ(a[i].problem, b[i].problem);
  }
}

void expect_stats(const RejectionStats& s, std::int64_t length, std::int64_t format, std::int64_t wrong,
                  std::int64_t duplicate, std::int64_t cap, std::int64_t kept, std::int64_t prompts_with_any_kept) {
  EXPECT_EQ(s.rejected_length, length);
  EXPECT_EQ(s.rejected_format, format);
  EXPECT_EQ(s.rejected_wrong, wrong);
  EXPECT_EQ(s.rejected_duplicate, duplicate);
  EXPECT_EQ(s.rejected_cap, cap);
  EXPECT_EQ(s.kept, kept);
  EXPECT_EQ(s.prompts_with_any_kept, prompts_with_any_kept);
  EXPECT_EQ(s.candidates,
            s.rejected_length + s.rejected_format + s.rejected_wrong + s.rejected_duplicate + s.rejected_cap + s.kept);
}

}  // namespace

// ---- JSON Lines -----------------------------------------------------------------------------------

TEST_F(DistillTracesJsonl, RoundTripIsExactForValidUtf8) {
  const data::Problem p = arithmetic(3, '+', 4);
  const std::vector<Trace> traces = {
      {rl::r1_zero_prompt(p), data::worked_solution(p), 1.0, "teacher-1b", 7, data::canonical(p)},
      {"a \"quoted\" prompt\\ with\ttabs\r\nand lines\n", "<think>12 × 3 − 4 ÷ 2\n\n</think><answer>\"x\"</answer>", 0.1,
       "", std::numeric_limits<std::uint64_t>::max(), "countdown 3 7 25 50 -> 128"},
      {"", "", -2.5e-300, "s", 0, ""},
  };
  const std::string path = this->path("traces.jsonl");
  distill::write_traces(path, traces);
  expect_same(distill::read_traces(path), traces);
  // One record per line: the newlines inside strings are escaped.
  const std::string bytes = kiln::testing::read_bytes(path);
  EXPECT_EQ(std::count(bytes.begin(), bytes.end(), '\n'), 3);
  EXPECT_EQ(bytes.back(), '\n');
  // Nothing but the file itself is left in the directory (an atomic write).
  EXPECT_EQ(listing(), std::vector<std::string>{"traces.jsonl"});
  // Writing again replaces the file; no traces give an empty file.
  distill::write_traces(path, {});
  EXPECT_EQ(kiln::testing::read_bytes(path), "");
  EXPECT_TRUE(distill::read_traces(path).empty());
}

TEST_F(DistillTracesJsonl, InvalidUtf8IsWrittenAsReplacementCharacters) {
  // Byte-level BPE can cut a character: a lone continuation byte, 0xFF, a cut 3-byte "×" prefix.
  const Trace t{"prompt", std::string("<think>\x80 a \xFF b \xC3") + "</think><answer>7</answer>", 1.0, "src\xFE", 3,
                "arithmetic 3 + 4"};
  const std::string path = this->path("bad_utf8.jsonl");
  distill::write_traces(path, {t});
  const std::vector<Trace> back = distill::read_traces(path);
  ASSERT_EQ(back.size(), 1u);
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(back[0].completion, "<think>" + fffd + " a " + fffd + " b " + fffd + "</think><answer>7</answer>");
  EXPECT_EQ(back[0].source, "src" + fffd);
  EXPECT_EQ(back[0].prompt, "prompt");
  EXPECT_EQ(back[0].seed, 3u);
}

TEST_F(DistillTracesJsonl, BlankLinesAreSkipped) {
  const std::string path = this->path("blank.jsonl");
  kiln::testing::write_bytes(path, "");
  EXPECT_TRUE(distill::read_traces(path).empty());
  kiln::testing::write_bytes(path, "\n  \n\t\r\n");
  EXPECT_TRUE(distill::read_traces(path).empty());
  // CRLF line ends, blank lines between and after records, no final newline.
  kiln::testing::write_bytes(path, "\n" + kGoodLine + "\r\n\r\n   \n" + kGoodLine);
  const std::vector<Trace> traces = distill::read_traces(path);
  ASSERT_EQ(traces.size(), 2u);
  EXPECT_EQ(traces[1].completion, "<think></think><answer>7</answer>");
  EXPECT_EQ(traces[1].prompt, "Arithmetic: compute 3 + 4.\n");
  EXPECT_EQ(traces[1].reward, 1.0);
  EXPECT_EQ(traces[1].seed, 7u);
  EXPECT_EQ(traces[1].source, "teacher");
  EXPECT_EQ(traces[1].problem, "arithmetic 3 + 4");
  // Keys it does not know are ignored.
  kiln::testing::write_bytes(path, kGoodLine.substr(0, kGoodLine.size() - 1) + R"(,"extra":[1,2]})" + "\n");
  EXPECT_EQ(distill::read_traces(path).size(), 1u);
}

TEST_F(DistillTracesJsonl, MalformedLinesAreReportedWithTheirLineNumber) {
  const std::string path = this->path("bad.jsonl");
  // A record with one key replaced, or its value replaced, by the given text.
  auto with = [](const std::string& key, const std::string& value) {
    io::json j = io::json::parse(kGoodLine);
    if (value.empty()) {
      j.erase(key);
    } else {
      j[key] = io::json::parse(value);
    }
    return j.dump();
  };
  struct Case {
    std::string line;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"{\"prompt\": \"unterminated", {"not valid JSON"}},
      {"not json at all", {"not valid JSON"}},
      {kGoodLine + " {}", {"not valid JSON"}},  // two values on one line
      {"[1, 2]", {"must be a JSON object", "an array of 2 values"}},
      {"\"a string\"", {"must be a JSON object"}},
      {R"({"prompt":"a","prompt":"b"})", {"appears twice"}},
      {with("prompt", ""), {"missing key \"prompt\""}},
      {with("completion", ""), {"missing key \"completion\""}},
      {with("reward", ""), {"missing key \"reward\""}},
      {with("source", ""), {"missing key \"source\""}},
      {with("seed", ""), {"missing key \"seed\""}},
      {with("problem", ""), {"missing key \"problem\""}},
      {with("prompt", "12"), {"\"prompt\" must be a string", "got 12"}},
      {with("completion", "null"), {"\"completion\" must be a string"}},
      {with("source", "[\"x\"]"), {"\"source\" must be a string"}},
      {with("problem", "{}"), {"\"problem\" must be a string"}},
      {with("reward", "\"1.0\""), {"\"reward\" must be a number", "got \"1.0\""}},
      {with("reward", "true"), {"\"reward\" must be a number"}},
      {with("seed", "-1"), {"\"seed\" must be a non-negative integer"}},
      {with("seed", "1.5"), {"\"seed\" must be a non-negative integer"}},
      {with("seed", "\"7\""), {"\"seed\" must be a non-negative integer"}},
      // JSON has no non-finite numbers: nlohmann refuses a literal that overflows a double.
      {kGoodLine.substr(0, kGoodLine.find("\"reward\":1.0")) + "\"reward\":1e999" +
           kGoodLine.substr(kGoodLine.find(",\"seed\"")),
       {"not valid JSON", "number overflow"}},
      {kGoodLine.substr(0, kGoodLine.find("\"reward\":1.0")) + "\"reward\":-1e400" +
           kGoodLine.substr(kGoodLine.find(",\"seed\"")),
       {"not valid JSON", "number overflow"}},
      {kGoodLine.substr(0, kGoodLine.find("\"reward\":1.0")) + "\"reward\":NaN" +
           kGoodLine.substr(kGoodLine.find(",\"seed\"")),
       {"not valid JSON"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    // Two good lines, then the bad one on line 3 (a blank line counts as a line).
    kiln::testing::write_bytes(path, kGoodLine + "\n\n" + c.line + "\n" + kGoodLine + "\n");
    std::vector<std::string> parts = c.message;
    parts.push_back("distill::read_traces");
    parts.push_back(path + " line 3");
    EXPECT_KILN_ERROR(distill::read_traces(path), parts);
  }
  // A bad last line without a newline.
  kiln::testing::write_bytes(path, kGoodLine + "\n" + kGoodLine + "\n" + kGoodLine + "\n{");
  EXPECT_KILN_ERROR(distill::read_traces(path), path + " line 4", "not valid JSON");
  EXPECT_KILN_ERROR(distill::read_traces(this->path("missing.jsonl")), "distill::read_traces", "missing.jsonl");
}

TEST_F(DistillTracesJsonl, NonFiniteRewardsAreNotWritten) {
  const std::string path = this->path("nan.jsonl");
  distill::write_traces(path, {Trace{"p", "c", 1.0, "s", 1, "x"}});
  for (const double bad : {std::nan(""), double(INFINITY), -double(INFINITY)}) {
    EXPECT_KILN_ERROR(distill::write_traces(path, {Trace{"p", "c", 1.0, "s", 1, "x"}, Trace{"p", "c", bad, "s", 1, "x"}}),
                      "distill::write_traces", "trace 1", "rewards must be finite");
  }
  EXPECT_EQ(distill::read_traces(path).size(), 1u);  // the previous file is untouched
}

// ---- the filter ---------------------------------------------------------------------------------

TEST(DistillTracesSelect, GradeCandidateUsesTheVerifier) {
  const data::Problem p = arithmetic(3, '+', 4);
  const Candidate good = distill::grade_candidate(p, 5, data::worked_solution(p), 40, false);
  EXPECT_EQ(good.problem, 5u);
  EXPECT_EQ(good.tokens, 40);
  EXPECT_FALSE(good.truncated);
  EXPECT_TRUE(good.correct);
  EXPECT_TRUE(good.well_formed);
  EXPECT_EQ(good.reward, 1.0);
  const Candidate wrong = distill::grade_candidate(p, 0, "<think></think><answer>8</answer>", 5, false);
  EXPECT_FALSE(wrong.correct);
  EXPECT_TRUE(wrong.well_formed);
  EXPECT_EQ(wrong.reward, 0.1);
  const Candidate sloppy = distill::grade_candidate(p, 0, "so <answer>7</answer>", 5, true);
  EXPECT_TRUE(sloppy.correct);  // the last answer block is right, the shape is not
  EXPECT_FALSE(sloppy.well_formed);
  EXPECT_TRUE(sloppy.truncated);
}

TEST(DistillTracesSelect, EachFilterWithExactCounts) {
  const data::Problem p0 = arithmetic(3, '+', 4), p1 = arithmetic(12, '*', 9);
  const data::Problem p2 = data::make_countdown({.min_numbers = 3, .max_numbers = 4}, 11, 0);
  const std::string worked0 = data::worked_solution(p0), direct0 = data::direct_solution(p0);
  std::vector<Candidate> c;
  auto add = [&](const data::Problem& p, std::size_t index, std::string text, std::int64_t tokens = 10,
                 bool truncated = false) {
    c.push_back(distill::grade_candidate(p, index, std::move(text), tokens, truncated));
  };
  add(p0, 0, worked0);                                               // 0 kept
  add(p0, 0, "<think>3 + 4 = 8</think><answer>8</answer>");         // 1 wrong
  add(p0, 0, "The answer is <answer>7</answer>");                    // 2 format (correct answer, no think block)
  add(p0, 0, "<think></think><answer>7</answer><answer>7</answer>");  // 3 format (two answer blocks)
  add(p0, 0, direct0, 21);                                           // 4 length: 21 tokens > 20
  add(p0, 0, "<think>3 + 4 is", 20, true);                           // 5 length: truncated
  add(p0, 0, worked0);                                               // 6 duplicate of 0
  add(p0, 0, direct0, 20);                                           // 7 kept (20 tokens: at the limit)
  add(p0, 0, " <think>7</think>\n<answer> 7 </answer>\n");           // 8 cap (a third correct one)
  add(p1, 1, "<think></think><answer>107</answer>");                 // 9 wrong
  add(p1, 1, "<think></think><answer>108");                          // 10 format (no </answer>)
  add(p2, 2, data::worked_solution(p2));                             // 11 kept
  add(p2, 2, data::direct_solution(p2));                             // 12 kept
  add(p2, 2, data::worked_solution(p2), 10, true);                   // 13 length (truncated wins over all)
  add(p0, 3, worked0);                                               // 14 kept: another index, not a duplicate

  RejectionOptions o;
  o.max_completion_tokens = 20;
  o.max_per_prompt = 2;
  RejectionStats s;
  EXPECT_EQ(distill::select_traces(c, o, &s), (std::vector<std::size_t>{0, 7, 11, 12, 14}));
  EXPECT_EQ(s.candidates, 15);
  expect_stats(s, 3, 3, 2, 1, 1, 5, 3);

  // Each option off in turn lets its rejects through (where no earlier check stops them).
  RejectionOptions no_limit = o;
  no_limit.max_completion_tokens = 0;  // 4 is kept; 7 is then its duplicate and 8 over the cap
  EXPECT_EQ(distill::select_traces(c, no_limit, &s), (std::vector<std::size_t>{0, 4, 11, 12, 14}));
  expect_stats(s, 2, 3, 2, 2, 1, 5, 3);

  RejectionOptions no_cap = o;
  no_cap.max_per_prompt = 0;
  EXPECT_EQ(distill::select_traces(c, no_cap, &s), (std::vector<std::size_t>{0, 7, 8, 11, 12, 14}));
  expect_stats(s, 3, 3, 2, 1, 0, 6, 3);

  RejectionOptions any_answer = no_cap;
  any_answer.require_correct = false;  // well-formed wrong answers are kept, with their reward
  EXPECT_EQ(distill::select_traces(c, any_answer, &s), (std::vector<std::size_t>{0, 1, 7, 8, 9, 11, 12, 14}));
  expect_stats(s, 3, 3, 0, 1, 0, 8, 4);
  EXPECT_EQ(c[9].reward, 0.1);

  RejectionOptions any_shape = no_cap;
  any_shape.require_format = false;  // correct answers in any shape; malformed wrong ones count as wrong
  EXPECT_EQ(distill::select_traces(c, any_shape, &s), (std::vector<std::size_t>{0, 2, 3, 7, 8, 11, 12, 14}));
  expect_stats(s, 3, 0, 3, 1, 0, 8, 3);

  RejectionOptions keep_copies = no_cap;
  keep_copies.deduplicate = false;
  EXPECT_EQ(distill::select_traces(c, keep_copies, &s), (std::vector<std::size_t>{0, 6, 7, 8, 11, 12, 14}));
  expect_stats(s, 3, 3, 2, 0, 0, 7, 3);

  // The cap counts distinct completions: a duplicate does not use up a place.
  RejectionOptions one = o;
  one.max_per_prompt = 1;
  EXPECT_EQ(distill::select_traces(c, one, &s), (std::vector<std::size_t>{0, 11, 14}));
  expect_stats(s, 3, 3, 2, 1, 3, 3, 3);

  // No candidates; a null stats pointer.
  EXPECT_TRUE(distill::select_traces({}, o, &s).empty());
  expect_stats(s, 0, 0, 0, 0, 0, 0, 0);
  EXPECT_EQ(distill::select_traces(c, o).size(), 5u);
}

TEST(DistillTracesSelect, BadOptionsAreRefused) {
  const std::vector<Candidate> none;
  RejectionOptions o;
  o.samples_per_prompt = 0;
  EXPECT_KILN_ERROR(distill::select_traces(none, o), "distill::select_traces", "samples_per_prompt must be >= 1");
  o = {};
  o.max_completion_tokens = -1;
  EXPECT_KILN_ERROR(distill::select_traces(none, o), "max_completion_tokens must be >= 0");
  o = {};
  o.max_per_prompt = -2;
  EXPECT_KILN_ERROR(distill::select_traces(none, o), "max_per_prompt must be >= 0");
  o = {};
  o.prompts_per_wave = 0;
  EXPECT_KILN_ERROR(distill::select_traces(none, o), "prompts_per_wave must be >= 1");
}

// ---- sampling from a model ------------------------------------------------------------------------

namespace {

using Model = nn::LlamaForCausalLM<float>;

// bytes 0..255, then bos 256, eos 257, pad 258, <think> 259, </think> 260, <answer> 261, </answer> 262.
data::Tokenizer r1_tokenizer() { return data::Tokenizer(data::SpecialTokens{}); }

nn::LlamaConfig tiny_config(std::int64_t vocab) {
  nn::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 16;
  c.intermediate_size = 16;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 160;
  return c;
}

// A Llama that writes "<think></think><answer>7</answer>" after any prompt ending in "\n": its
// attention and MLP outputs are zero, so the residual stream is the token's embedding and the
// logits depend on the current token alone (a bigram model). Each token of the chain
// "\n" <think> </think> <answer> "7" </answer> <eos> has its own basis direction e_k; the final
// RMSNorm makes it 4·e_k (hidden 16) and lm_head row next(k) = 10·e_k, so the next token has
// logit 40 and every other 0: it is drawn with probability 1 − 262·e^−40, at any temperature ≤ 1.
std::unique_ptr<Model> answer_seven_model(const data::Tokenizer& tok) {
  const std::int64_t V = tok.vocab_size(), H = 16;
  Generator init{1, 0};
  auto m = std::make_unique<Model>(tiny_config(V), init);
  const std::vector<std::int64_t> chain = {'\n',
                                           *tok.token_id("<think>"),
                                           *tok.token_id("</think>"),
                                           *tok.token_id("<answer>"),
                                           '7',
                                           *tok.token_id("</answer>"),
                                           *tok.eos_id()};
  std::vector<float> embed(static_cast<std::size_t>(V * H), 0.0f), head(static_cast<std::size_t>(V * H), 0.0f);
  for (std::size_t k = 0; k + 1 < chain.size(); ++k) {
    embed[static_cast<std::size_t>(chain[k] * H) + k] = 1.0f;
    head[static_cast<std::size_t>(chain[k + 1] * H) + k] = 10.0f;
  }
  int set = 0;
  m->visit("", [&](const std::string& name, Tensor<float>* t, bool) {
    std::vector<float> v(static_cast<std::size_t>(t->numel()), 0.0f);
    if (name == "model.embed_tokens.weight") v = embed, ++set;
    if (name == "lm_head.weight") v = head, ++set;
    if (name == "model.norm.weight") std::fill(v.begin(), v.end(), 1.0f), ++set;
    *t = Tensor<float>::from_vector(v, t->shape());
  });
  EXPECT_EQ(set, 3) << "the model's parameter names changed";
  return m;
}

infer::SamplingParams r1_sampling(const data::Tokenizer& tok, std::uint64_t seed, std::int64_t max_new_tokens) {
  infer::SamplingParams s;
  s.temperature = 1.0;
  s.max_new_tokens = max_new_tokens;
  s.eos_token_ids = {*tok.eos_id()};
  s.stop_strings = {"</answer>"};
  s.seed = seed;
  return s;
}

std::function<std::vector<std::int64_t>(const data::Problem&)> r1_prompts(const data::Tokenizer& tok) {
  return [&tok](const data::Problem& p) { return rl::encode_r1_zero_prompt(tok, p); };
}

}  // namespace

TEST(DistillTracesSample, HandSetModelGivesExactCounts) {
  const data::Tokenizer tok = r1_tokenizer();
  const auto model = answer_seven_model(tok);
  // 3 + 4 and 0 + 7 make 7; 2 + 2 does not.
  const std::vector<data::Problem> problems = {arithmetic(3, '+', 4), arithmetic(2, '+', 2), arithmetic(0, '+', 7)};
  RejectionOptions o;
  o.samples_per_prompt = 3;
  o.prompts_per_wave = 2;  // waves of 2 and 1 problems
  RejectionStats s;
  std::vector<std::pair<std::int64_t, std::int64_t>> progress;
  const std::vector<Trace> traces = distill::rejection_sample(
      *model, tok, problems, r1_prompts(tok), r1_sampling(tok, 5, 32), o, "hand-set", &s,
      [&](std::int64_t done, std::int64_t total) { progress.emplace_back(done, total); });
  EXPECT_EQ(s.candidates, 9);
  expect_stats(s, 0, 0, 3, 4, 0, 2, 2);
  EXPECT_EQ(progress, (std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 3}, {3, 3}}));
  ASSERT_EQ(traces.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const data::Problem& p = problems[i == 0 ? 0 : 2];
    EXPECT_EQ(traces[i].prompt, rl::r1_zero_prompt(p));  // bos left out
    EXPECT_EQ(traces[i].completion, "<think></think><answer>7</answer>");
    EXPECT_EQ(traces[i].reward, 1.0);
    EXPECT_EQ(traces[i].source, "hand-set");
    EXPECT_EQ(traces[i].seed, 5u);
    EXPECT_EQ(traces[i].problem, data::canonical(p));
  }

  auto kept_with = [&](const RejectionOptions& options, std::int64_t max_new_tokens) {
    return distill::rejection_sample(*model, tok, problems, r1_prompts(tok), r1_sampling(tok, 5, max_new_tokens), options,
                                     "m", &s)
        .size();
  };
  // The completion is 5 tokens: a limit of 5 keeps it, 4 cuts every completion short.
  o.max_completion_tokens = 5;
  EXPECT_EQ(kept_with(o, 32), 2u);
  expect_stats(s, 0, 0, 3, 4, 0, 2, 2);
  o.max_completion_tokens = 4;
  EXPECT_EQ(kept_with(o, 32), 0u);
  expect_stats(s, 9, 0, 0, 0, 0, 0, 0);
  // So does a generation budget of 4 tokens.
  o.max_completion_tokens = 0;
  EXPECT_EQ(kept_with(o, 4), 0u);
  expect_stats(s, 9, 0, 0, 0, 0, 0, 0);
  // Keeping copies: all three samples of each right problem.
  o.deduplicate = false;
  EXPECT_EQ(kept_with(o, 32), 6u);
  expect_stats(s, 0, 0, 3, 0, 0, 6, 2);

  // The traces round-trip through a file.
  const std::string path =
      (std::filesystem::temp_directory_path() / ("kiln_test_traces_" + std::to_string(::getpid()) + ".jsonl")).string();
  distill::write_traces(path, traces);
  expect_same(distill::read_traces(path), traces);
  std::filesystem::remove(path);
}

TEST(DistillTracesSample, RandomModelIsDeterministicAndKeepsOnlyPassingTraces) {
  const data::Tokenizer tok = r1_tokenizer();
  Generator init{21, 0};
  const Model model(tiny_config(tok.vocab_size()), init);
  std::vector<data::Problem> problems;
  Generator draws{4, 0};
  for (int i = 0; i < 5; ++i)
    problems.push_back(data::sample_arithmetic({.min_digits = 1, .max_digits = 1}, draws, data::Split::train));
  const infer::SamplingParams sampling = r1_sampling(tok, 9, 40);

  auto run = [&](const RejectionOptions& o, RejectionStats* s) {
    return distill::rejection_sample(model, tok, problems, r1_prompts(tok), sampling, o, "random", s);
  };
  // Nothing is required but a completion that ended by itself within the budget.
  RejectionOptions lenient;
  lenient.samples_per_prompt = 4;
  lenient.require_correct = false;
  lenient.require_format = false;
  RejectionStats a, b, c;
  const std::vector<Trace> first = run(lenient, &a);
  const std::vector<Trace> again = run(lenient, &b);
  RejectionOptions small_waves = lenient;
  small_waves.prompts_per_wave = 2;
  small_waves.max_batch = 3;
  const std::vector<Trace> waved = run(small_waves, &c);
  expect_same(again, first);
  expect_same(waved, first);
  for (const RejectionStats* s : {&b, &c})
    expect_stats(*s, a.rejected_length, 0, 0, a.rejected_duplicate, 0, a.kept, a.prompts_with_any_kept);
  EXPECT_EQ(a.candidates, 20);
  EXPECT_EQ(static_cast<std::int64_t>(first.size()), a.kept);
  EXPECT_GT(a.kept, 0) << "this seed should let a few completions end within the budget";
  for (const Trace& t : first) {
    EXPECT_EQ(t.source, "random");
    EXPECT_EQ(t.seed, 9u);
    EXPECT_EQ(t.prompt.substr(0, rl::r1_zero_instruction.size()), rl::r1_zero_instruction);
  }

  // The default filters: whatever is kept is correct and well-formed, graded again here.
  RejectionStats strict;
  const std::vector<Trace> kept = run({.samples_per_prompt = 4}, &strict);
  expect_stats(strict, strict.rejected_length, strict.rejected_format, strict.rejected_wrong, strict.rejected_duplicate, 0,
               static_cast<std::int64_t>(kept.size()), strict.prompts_with_any_kept);
  EXPECT_EQ(strict.candidates, 20);
  EXPECT_EQ(strict.rejected_length, a.rejected_length);
  for (const Trace& t : kept) {
    const auto it = std::find_if(problems.begin(), problems.end(),
                                 [&](const data::Problem& p) { return data::canonical(p) == t.problem; });
    ASSERT_NE(it, problems.end());
    EXPECT_EQ(rl::grade(*it, t.completion).outcome, rl::Outcome::correct);
    EXPECT_TRUE(rl::well_formed(t.completion));
  }
}

TEST(DistillTracesSample, BadArgumentsAreRefused) {
  const data::Tokenizer tok = r1_tokenizer();
  Generator init{2, 0};
  const Model model(tiny_config(tok.vocab_size()), init);
  const std::vector<data::Problem> problems = {arithmetic(1, '+', 2)};
  RejectionOptions o;
  o.prompts_per_wave = 0;
  EXPECT_KILN_ERROR(distill::rejection_sample(model, tok, problems, r1_prompts(tok), r1_sampling(tok, 1, 4), o, "m"),
                    "distill::rejection_sample", "prompts_per_wave");
  EXPECT_KILN_ERROR(distill::rejection_sample(model, tok, problems, {}, r1_sampling(tok, 1, 4), {}, "m"),
                    "distill::rejection_sample", "encode_prompt is empty");
  const auto no_tokens = [](const data::Problem&) { return std::vector<std::int64_t>{}; };
  EXPECT_KILN_ERROR(distill::rejection_sample(model, tok, problems, no_tokens, r1_sampling(tok, 1, 4), {}, "m"),
                    "distill::rejection_sample", "encode_prompt gave no tokens for problem 0 (arithmetic 1 + 2)");
  // No problems: nothing to do.
  RejectionStats s;
  s.kept = 99;
  EXPECT_TRUE(distill::rejection_sample(model, tok, {}, r1_prompts(tok), r1_sampling(tok, 1, 4), {}, "m", &s).empty());
  expect_stats(s, 0, 0, 0, 0, 0, 0, 0);
}
