// Byte-level BPE tokenizer: pre-tokenisation, training (hand-computed merges), exact round trips
// of arbitrary bytes, encoding against a plain reference BPE, kiln's file format, Hugging Face
// tokenizer.json loading, and error messages.
#include <kiln/data/tasks.hpp>
#include <kiln/data/tokenizer.hpp>

#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "test_util.hpp"

namespace {

using kiln::data::SpecialTokens;
using kiln::data::Tokenizer;
namespace bpe = kiln::data::bpe;
using Ids = std::vector<std::int64_t>;

// Files of this run live in one temporary directory, removed at exit.
std::string temp_path(const std::string& name) {
  struct Dir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("kiln_test_tokenizer_" + std::to_string(::getpid()));
    Dir() { std::filesystem::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return (dir.path / name).string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// A corpus with the flavour of kiln's data: task prompts with worked solutions, plus prose.
std::string sample_corpus() {
  kiln::Generator gen{7, 0};
  std::string corpus;
  for (const auto& doc : kiln::data::worked_corpus({}, gen, 300)) corpus += doc + "\n";
  corpus += "The quick brown fox jumps over the lazy dog. Hello, world!  Tabs\tand\nnewlines\r\n  \n";
  corpus += "Ünïcödé wörds and émojis 🙂 mixed with ASCII; numbers 12345 and 3.14159.";
  return corpus;
}

const Tokenizer& trained() {
  static const Tokenizer t = Tokenizer::train(sample_corpus(), 600);
  return t;
}

// Random byte strings: raw bytes (mostly invalid UTF-8), text-like runs, special tokens and
// fragments of them.
std::string random_text(std::mt19937_64& rng) {
  static const std::vector<std::string> pieces = {
      "<think>", "</think>", "<answer>", "</answer>", "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<think",
      "</answer", "<|", "|>", " the", " 7 * 25", "Countdown: use", "\n", "  ", "\xC3\x97", "\xF0\x9F\x99\x82", "\xC3", "\xFF\xFE"};
  std::string s;
  const int parts = static_cast<int>(rng() % 12);
  for (int p = 0; p < parts; ++p) {
    switch (rng() % 4) {
      case 0: {  // raw bytes
        const int n = static_cast<int>(rng() % 12);
        for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(rng() & 0xFF));
        break;
      }
      case 1: {  // ASCII letters, digits, spaces
        const std::string alphabet = "abcdefghij  0123456789.,";
        const int n = static_cast<int>(rng() % 15);
        for (int i = 0; i < n; ++i) s.push_back(alphabet[rng() % alphabet.size()]);
        break;
      }
      default:
        s += pieces[rng() % pieces.size()];
    }
  }
  return s;
}

// GPT-2's original merge loop: repeatedly merge every occurrence (left to right) of the adjacent
// pair with the lowest rank. Written over byte strings, independently of the tokenizer's lists.
std::vector<std::string> reference_bpe(const std::string& word, const std::map<std::pair<std::string, std::string>, std::size_t>& ranks) {
  std::vector<std::string> parts;
  for (const char c : word) parts.emplace_back(1, c);
  while (parts.size() > 1) {
    std::size_t best = SIZE_MAX;
    std::pair<std::string, std::string> best_pair;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ranks.find({parts[i], parts[i + 1]});
      if (it != ranks.end() && it->second < best) {
        best = it->second;
        best_pair = it->first;
      }
    }
    if (best == SIZE_MAX) break;
    std::vector<std::string> next;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (i + 1 < parts.size() && parts[i] == best_pair.first && parts[i + 1] == best_pair.second) {
        next.push_back(parts[i] + parts[i + 1]);
        ++i;
      } else {
        next.push_back(parts[i]);
      }
    }
    parts = std::move(next);
  }
  return parts;
}

// GPT-2's byte-to-unicode table written a second way: code point for byte b is b itself for the
// three printable ranges, else 256 + (number of non-printable bytes below b).
std::string hf_token_text(const std::string& bytes) {
  auto printable = [](int b) { return (33 <= b && b <= 126) || (161 <= b && b <= 172) || (174 <= b && b <= 255); };
  std::string out;
  for (const char ch : bytes) {
    const int b = static_cast<unsigned char>(ch);
    int cp = b;
    if (!printable(b)) {
      cp = 256;
      for (int x = 0; x < b; ++x) cp += printable(x) ? 0 : 1;
    }
    if (cp < 128) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

TEST(Tokenizer, ByteToUnicodeMatchesGpt2) {
  // Spot values of GPT-2's table: space -> U+0120 'Ġ', newline -> U+010A 'Ċ', 'A' -> 'A', 0xAD -> U+0143.
  const auto& map = bpe::bytes_to_unicode();
  EXPECT_EQ(map[' '], 0x120u);
  EXPECT_EQ(map['\n'], 0x10Au);
  EXPECT_EQ(map['A'], static_cast<char32_t>('A'));
  EXPECT_EQ(map[0xAD], 0x143u);
  EXPECT_EQ(map[0], 0x100u);
  std::set<char32_t> distinct(map.begin(), map.end());
  EXPECT_EQ(distinct.size(), 256u);
  for (int b = 0; b < 256; ++b) {
    const std::string bytes(1, static_cast<char>(b));
    EXPECT_EQ(bpe::byte_level_encode(bytes), hf_token_text(bytes)) << b;
    EXPECT_EQ(bpe::byte_level_decode(bpe::byte_level_encode(bytes)), bytes) << b;
  }
  EXPECT_FALSE(bpe::byte_level_decode("\xE2\x82\xAC").has_value());  // U+20AC is outside the map
  EXPECT_FALSE(bpe::byte_level_decode(" ").has_value());             // a raw space is not byte-level text
  EXPECT_FALSE(bpe::byte_level_decode("\xC4").has_value());          // truncated UTF-8
}

TEST(Tokenizer, SplitWords) {
  using V = std::vector<std::string_view>;
  EXPECT_EQ(bpe::split_words("Hi  there,\n\n42!"), (V{"Hi", " ", " there", ",", "\n", "\n", "42", "!"}));
  EXPECT_EQ(bpe::split_words(" a1b  c "), (V{" a", "1", "b", " ", " c", " "}));
  EXPECT_EQ(bpe::split_words("x\t y"), (V{"x", "\t", " y"}));
  EXPECT_EQ(bpe::split_words("((7 * 25))"), (V{"(", "(", "7", " *", " 25", ")", ")"}));
  EXPECT_EQ(bpe::split_words("\n\n"), (V{"\n\n"}));
  EXPECT_EQ(bpe::split_words("caf\xC3\xA9 \xC3\x97"), (V{"caf\xC3\xA9", " \xC3\x97"}));
  EXPECT_TRUE(bpe::split_words("").empty());
  std::mt19937_64 rng(1);
  for (int k = 0; k < 2000; ++k) {
    const std::string s = random_text(rng);
    std::string joined;
    for (const auto w : bpe::split_words(s)) {
      EXPECT_FALSE(w.empty());
      joined += w;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(Tokenizer, TrainLearnsHandComputedMerges) {
  // Words: "hug" x1, " hug" x2, " pug", " pun", " bun", " hugs". Pair counts: (u,g) 5, (h,u) 4,
  // (' ',h) 3, (' ',p) (p,u) (u,n) 2, ... Merges, by hand:
  //   1. u g -> "ug" (5)   2. h ug -> "hug" (4)   3. ' ' hug -> " hug" (3)
  //   4. ' ' p -> " p" (2; ties with u n at 2, ' ' = 32 < 'u' = 117)   5. u n -> "un" (2)
  // then every pair occurs once, below min_frequency 2.
  const std::string corpus = "hug hug hug pug pun bun hugs";
  const Tokenizer t = Tokenizer::train(corpus, 1000);
  const std::int64_t first = 256 + 7;  // bytes, then bos eos pad <think> </think> <answer> </answer>
  ASSERT_EQ(t.num_merges(), 5);
  EXPECT_EQ(t.vocab_size(), first + 5);
  const std::vector<std::pair<std::int64_t, std::int64_t>> expected = {
      {'u', 'g'}, {'h', first}, {' ', first + 1}, {' ', 'p'}, {'u', 'n'}};
  EXPECT_EQ(t.merges(), expected);
  const std::vector<std::string> bytes = {"ug", "hug", " hug", " p", "un"};
  for (std::size_t i = 0; i < bytes.size(); ++i) EXPECT_EQ(t.token_bytes(first + static_cast<std::int64_t>(i)), bytes[i]);
  EXPECT_EQ(t.encode("hug pun hugs"), (Ids{first + 1, first + 3, first + 4, first + 2, 's'}));

  // The vocabulary size caps the merges; min_frequency 1 continues with the smallest pair (' ', b).
  EXPECT_EQ(Tokenizer::train(corpus, first + 2).num_merges(), 2);
  const Tokenizer more = Tokenizer::train(corpus, first + 6, {}, 1);
  ASSERT_EQ(more.num_merges(), 6);
  EXPECT_EQ(more.merges()[5], (std::pair<std::int64_t, std::int64_t>{' ', 'b'}));

  // Ids of the added tokens.
  EXPECT_EQ(t.bos_id(), 256);
  EXPECT_EQ(t.eos_id(), 257);
  EXPECT_EQ(t.pad_id(), 258);
  EXPECT_EQ(t.token_id("<think>"), 259);
  EXPECT_EQ(t.token_id("</answer>"), 262);
  EXPECT_TRUE(t.is_special(259));
  EXPECT_FALSE(t.is_special('a'));
}

TEST(Tokenizer, TrainingNeverMergesAcrossOrIntoAddedTokens) {
  std::string corpus;
  for (int i = 0; i < 50; ++i) corpus += "<think>xy xy</think><answer>xy</answer>";
  const Tokenizer t = Tokenizer::train(corpus, 400);
  EXPECT_GT(t.num_merges(), 0);
  for (std::int64_t id = 263; id < t.vocab_size(); ++id) {
    const std::string& b = t.token_bytes(id);
    EXPECT_EQ(b.find_first_not_of("xy "), std::string::npos) << "merged token \"" << b << "\"";
  }
  const Ids ids = t.encode("<think>xy</think>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 259);
  EXPECT_EQ(ids.back(), 260);
  // With added tokens disabled their text is ordinary bytes.
  const Ids plain = t.encode("<think>", false);
  EXPECT_EQ(t.decode(plain), "<think>");
  EXPECT_GT(plain.size(), 1u);
}

TEST(Tokenizer, RoundTripsRandomBytes) {
  const Tokenizer& t = trained();
  std::mt19937_64 rng(2024);
  for (int k = 0; k < 5000; ++k) {
    const std::string s = random_text(rng);
    const Ids ids = t.encode(s);
    ASSERT_EQ(t.decode(ids), s) << "case " << k;
    ASSERT_EQ(t.decode(t.encode(s, false)), s) << "case " << k;
    for (const std::int64_t id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
    // Every special token in the text comes out as its id.
    std::size_t specials = 0;
    for (const char* name : {"<think>", "</think>", "<answer>", "</answer>"})
      for (std::size_t p = s.find(name); p != std::string::npos; p = s.find(name, p + 1)) ++specials;
    std::size_t special_ids = 0;
    for (const std::int64_t id : ids) special_ids += (id >= 259 && id <= 262) ? 1 : 0;
    ASSERT_EQ(special_ids, specials) << "case " << k;
  }
  // Every single byte and every pair of bytes.
  for (int a = 0; a < 256; ++a)
    for (int b = 0; b < 256; b += 5) {
      const std::string s = {static_cast<char>(a), static_cast<char>(b)};
      ASSERT_EQ(t.decode(t.encode(s)), s);
    }
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode(Ids{}), "");
}

TEST(Tokenizer, LongWordsAndLongTexts) {
  const Tokenizer& t = trained();
  const std::string word(200000, 'a');  // one word: quadratic merging would not finish
  EXPECT_EQ(t.decode(t.encode(word)), word);
  std::string text;
  std::mt19937_64 rng(5);
  while (text.size() < 1000000) text += random_text(rng);
  EXPECT_EQ(t.decode(t.encode(text)), text);
}

// Checks `t` against reference_bpe on `count` words: words of `corpus` and random words over `letters`.
void expect_reference_bpe(const Tokenizer& t, const std::string& corpus, const std::string& letters, int count) {
  std::map<std::pair<std::string, std::string>, std::size_t> ranks;
  for (std::size_t r = 0; r < t.merges().size(); ++r) {
    const auto [l, rr] = t.merges()[r];
    ranks.emplace(std::pair{t.token_bytes(l), t.token_bytes(rr)}, r);
  }
  std::mt19937_64 rng(11);
  auto words = bpe::split_words(corpus);
  for (int k = 0; k < count; ++k) {
    std::string word;
    if (k % 2 == 0) {
      word = std::string(words[rng() % words.size()]);
    } else {  // random words over a few letters, with repeats (overlapping pairs like "aaa")
      word = (rng() % 2) ? " " : "";
      const int n = 1 + static_cast<int>(rng() % 20);
      for (int i = 0; i < n; ++i) word.push_back(letters[rng() % letters.size()]);
    }
    ASSERT_EQ(bpe::split_words(word).size(), 1u) << word;
    Ids expected;
    for (const std::string& part : reference_bpe(word, ranks)) expected.push_back(t.token_id(part).value());
    ASSERT_EQ(t.encode(word), expected) << "word \"" << word << "\"";
  }
}

TEST(Tokenizer, EncodingMatchesReferenceBpe) {
  expect_reference_bpe(trained(), sample_corpus(), "aenstu", 3000);
  // Words of two letters give merges like (a, a) whose occurrences overlap ("aaa"): the
  // leftmost pair merges first.
  std::mt19937_64 rng(12);
  std::string corpus;
  for (int k = 0; k < 3000; ++k) {
    corpus += ' ';
    for (int i = 1 + static_cast<int>(rng() % 9); i > 0; --i) corpus.push_back(rng() % 3 ? 'a' : 'b');
  }
  const Tokenizer ab = Tokenizer::train(corpus, 400);
  ASSERT_TRUE(ab.token_id("aa").has_value());
  expect_reference_bpe(ab, corpus, "ab", 3000);
}

TEST(Tokenizer, EncodeDecodeConsistency) {
  const Tokenizer& t = trained();
  std::mt19937_64 rng(3);
  for (int k = 0; k < 2000; ++k) {
    const Ids ids = t.encode(random_text(rng));
    ASSERT_EQ(t.encode(t.decode(ids)), ids);  // encoding is canonical
    Ids any(rng() % 20);
    for (auto& id : any) id = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(t.vocab_size()));
    const std::string text = t.decode(any);
    ASSERT_EQ(t.decode(t.encode(text)), text);
  }
  // skip_special drops only the special tokens.
  const Ids ids = t.encode("<|begin_of_text|><think>a</think>b<|end_of_text|>");
  EXPECT_EQ(t.decode(ids, true), "ab");
}

TEST(Tokenizer, SaveLoadRoundTrip) {
  const Tokenizer& t = trained();
  const std::string path = temp_path("tok.json");
  t.save(path);
  const Tokenizer u = Tokenizer::load(path);
  EXPECT_EQ(u.vocab_size(), t.vocab_size());
  EXPECT_EQ(u.merges(), t.merges());
  EXPECT_EQ(u.bos_id(), t.bos_id());
  EXPECT_EQ(u.eos_id(), t.eos_id());
  EXPECT_EQ(u.pad_id(), t.pad_id());
  for (std::int64_t id = 0; id < t.vocab_size(); ++id) {
    ASSERT_EQ(u.token_bytes(id), t.token_bytes(id));
    ASSERT_EQ(u.is_special(id), t.is_special(id));
  }
  std::mt19937_64 rng(9);
  for (int k = 0; k < 1000; ++k) {
    const std::string s = random_text(rng);
    ASSERT_EQ(u.encode(s), t.encode(s));
  }
  // Saving again gives the same bytes.
  const std::string again = temp_path("tok2.json");
  u.save(again);
  EXPECT_EQ(kiln::io::read_text_file(path, "test"), kiln::io::read_text_file(again, "test"));

  // Custom special tokens and roles survive too; a tokenizer without roles has none.
  SpecialTokens custom;
  custom.bos = "[BOS]";
  custom.eos = "";
  custom.pad = "[PAD]";
  custom.others = {"<tool>"};
  Tokenizer c = Tokenizer::train("some words some words", 300, custom);
  c.save(path);
  const Tokenizer d = Tokenizer::load(path);
  EXPECT_EQ(d.bos_id(), 256);
  EXPECT_FALSE(d.eos_id().has_value());
  EXPECT_EQ(d.pad_id(), 257);
  EXPECT_EQ(d.encode("[BOS]x<tool>"), (Ids{256, 'x', 258}));
  c.set_special_roles("<tool>", "[BOS]", "");
  EXPECT_EQ(c.bos_id(), 258);
  EXPECT_EQ(c.eos_id(), 256);
  EXPECT_FALSE(c.pad_id().has_value());
  EXPECT_KILN_ERROR(c.set_special_roles("nope", "", ""), "Tokenizer::set_special_roles", "nope");
}

// A Hugging Face tokenizer.json built by hand: the 256 byte tokens in GPT-2's id order (the
// printable bytes first), three merges, and an added special token.
kiln::io::json tiny_hf_json(bool merges_as_pairs) {
  using kiln::io::json;
  std::vector<int> order;
  auto printable = [](int b) { return (33 <= b && b <= 126) || (161 <= b && b <= 172) || (174 <= b && b <= 255); };
  for (int b = 0; b < 256; ++b)
    if (printable(b)) order.push_back(b);
  for (int b = 0; b < 256; ++b)
    if (!printable(b)) order.push_back(b);
  json vocab = json::object();
  for (std::size_t i = 0; i < order.size(); ++i) vocab[hf_token_text(std::string(1, static_cast<char>(order[i])))] = i;
  vocab["\xC4\xA0t"] = 256;  // "Ġt"
  vocab["he"] = 257;
  vocab["\xC4\xA0the"] = 258;
  vocab["<|endoftext|>"] = 259;
  json merges = json::array();
  const std::vector<std::pair<std::string, std::string>> m = {{"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}};
  for (const auto& [a, b] : m) merges.push_back(merges_as_pairs ? json::array({a, b}) : json(a + " " + b));
  return json{{"version", "1.0"},
              {"added_tokens", json::array({json{{"id", 259}, {"content", "<|endoftext|>"}, {"special", true}},
                                            json{{"id", 260}, {"content", "<tool>"}, {"special", false}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                         {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                         {"merges", merges}}}};
}

TEST(Tokenizer, LoadsHandWrittenHuggingFaceFile) {
  for (const bool pairs : {false, true}) {
    const std::string path = temp_path(pairs ? "hf_pairs.json" : "hf_strings.json");
    write_text(path, tiny_hf_json(pairs).dump());
    const Tokenizer t = Tokenizer::load(path);
    EXPECT_EQ(t.vocab_size(), 261);
    EXPECT_EQ(t.num_merges(), 3);
    // GPT-2 ids: '!' is 0, 'A' is 32, 'e' is 68, 'h' is 71, 't' is 83, space is 220 ('Ġ', U+0120).
    EXPECT_EQ(t.encode("!"), Ids{0});
    EXPECT_EQ(t.encode(" "), Ids{220});
    EXPECT_EQ(t.encode(" the the"), (Ids{258, 258}));
    EXPECT_EQ(t.encode("the"), (Ids{83, 257}));
    EXPECT_EQ(t.encode(" tAhe<|endoftext|>"), (Ids{256, 32, 257, 259}));
    EXPECT_TRUE(t.is_special(259));
    EXPECT_EQ(t.decode(Ids{258, 259, 220}), " the<|endoftext|> ");
    // A non-special added token is matched whole too, and kept by skip_special.
    EXPECT_EQ(t.encode("<tool> the"), (Ids{260, 258}));
    EXPECT_FALSE(t.is_special(260));
    EXPECT_TRUE(t.is_added(260));
    EXPECT_EQ(t.decode(Ids{259, 260, 258}, true), "<tool> the");
    EXPECT_FALSE(t.bos_id().has_value());  // no added token has a default bos/eos/pad name
    std::mt19937_64 rng(4);
    for (int k = 0; k < 500; ++k) {
      const std::string s = random_text(rng);
      ASSERT_EQ(t.decode(t.encode(s)), s);
    }
  }
}

// The same tokenizer written as kiln's file and as a Hugging Face file with permuted ids encodes
// every text to the same tokens.
TEST(Tokenizer, HuggingFaceFileMatchesEquivalentKilnTokenizer) {
  using kiln::io::json;
  const Tokenizer& t = trained();
  const auto n = t.vocab_size();
  auto perm = [&](std::int64_t id) { return n - 1 - id; };  // reverse the ids
  json vocab = json::object();
  json added = json::array();
  for (std::int64_t id = 0; id < n; ++id) {
    if (t.is_special(id))
      added.push_back({{"id", perm(id)}, {"content", t.token_bytes(id)}, {"special", true}, {"normalized", false}});
    else
      vocab[hf_token_text(t.token_bytes(id))] = perm(id);
  }
  json merges = json::array();
  for (const auto& [l, r] : t.merges()) merges.push_back(hf_token_text(t.token_bytes(l)) + " " + hf_token_text(t.token_bytes(r)));
  const json file = {{"added_tokens", added},
                     {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "ByteLevel"}, {"add_prefix_space", false}}})}}},
                     {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  const std::string path = temp_path("hf_equiv.json");
  write_text(path, file.dump(2));
  const Tokenizer h = Tokenizer::load(path);
  ASSERT_EQ(h.vocab_size(), n);
  EXPECT_EQ(h.bos_id(), perm(*t.bos_id()));  // found by the default names
  EXPECT_EQ(h.eos_id(), perm(*t.eos_id()));
  std::mt19937_64 rng(8);
  const std::string corpus = sample_corpus();
  for (int k = 0; k < 2000; ++k) {
    std::string s = random_text(rng);
    if (k % 4 == 0) s = corpus.substr(rng() % (corpus.size() - 300), 300);
    Ids expected = t.encode(s);
    for (auto& id : expected) id = perm(id);
    ASSERT_EQ(h.encode(s), expected) << "case " << k;
  }
}

TEST(Tokenizer, Errors) {
  const Tokenizer& t = trained();
  EXPECT_KILN_ERROR(t.decode(Ids{1, t.vocab_size()}), "Tokenizer::decode", "out of range", std::to_string(t.vocab_size()));
  EXPECT_KILN_ERROR(t.decode(Ids{-1}), "Tokenizer::decode", "-1");
  EXPECT_KILN_ERROR(t.token_bytes(100000), "Tokenizer::token_bytes", "100000");
  EXPECT_KILN_ERROR(Tokenizer::train("abc", 100), "Tokenizer::train", "100");
  SpecialTokens twice;
  twice.others = {"<x>", "<x>"};
  EXPECT_KILN_ERROR(Tokenizer{twice}, "<x>", "twice");

  const std::string path = temp_path("bad.json");
  EXPECT_KILN_ERROR(Tokenizer::load(temp_path("missing.json")), "Tokenizer::load", "missing.json", "cannot open");
  write_text(path, "{\"format\": \"kiln-bpe-tokenizer\", ");
  EXPECT_KILN_ERROR(Tokenizer::load(path), "Tokenizer::load", path, "not valid JSON");
  write_text(path, "[1, 2]");
  EXPECT_KILN_ERROR(Tokenizer::load(path), path, "not a JSON object");
  write_text(path, "{\"hello\": 1}");
  EXPECT_KILN_ERROR(Tokenizer::load(path), path, "neither");

  // kiln files with one thing wrong each.
  const kiln::io::json good = t.to_json();
  auto expect_bad = [&](const std::function<void(kiln::io::json&)>& spoil, const std::string& problem) {
    kiln::io::json j = good;
    spoil(j);
    write_text(path, j.dump());
    EXPECT_KILN_ERROR(Tokenizer::load(path), "Tokenizer::load", path, problem);
  };
  expect_bad([](auto& j) { j["version"] = 2; }, "version");
  expect_bad([](auto& j) { j.erase("vocab"); }, "\"vocab\" is missing");
  expect_bad([](auto& j) { j["vocab"][300] = 7; }, "vocab[300] is not a string");
  expect_bad([](auto& j) { j["vocab"][65] = " "; }, "vocab[65] is not byte-level text");
  expect_bad([](auto& j) { j["vocab"][65] = "B"; }, "same bytes");
  expect_bad([](auto& j) { j["merges"][0] = {1, 100000}; }, "merge 0 has an id outside");
  expect_bad([](auto& j) { j["merges"][0] = {1, 2, 3}; }, "merges[0] is not a pair");
  expect_bad([](auto& j) { j["merges"][0] = {"a", "b"}; }, "merges[0][0] is not an integer");
  expect_bad([](auto& j) { j["merges"][0] = {1, 2}; }, "not in the vocabulary");
  expect_bad([](auto& j) { j["bos"] = 65; }, "\"bos\" (65) is not the id of an added token");
  expect_bad([](auto& j) { j["added_tokens"][0]["id"] = 70000; }, "outside");

  // Hugging Face files with one thing wrong each.
  auto expect_bad_hf = [&](const std::function<void(kiln::io::json&)>& spoil, const std::string& problem,
                           const std::string& detail = "") {
    kiln::io::json j = tiny_hf_json(false);
    spoil(j);
    write_text(path, j.dump());
    EXPECT_KILN_ERROR(Tokenizer::load(path), "Tokenizer::load", path, problem, detail);
  };
  expect_bad_hf([](auto& j) { j["model"]["type"] = "WordPiece"; }, "model.type is \"WordPiece\"");
  expect_bad_hf([](auto& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "not ByteLevel");
  expect_bad_hf([](auto& j) { j["pre_tokenizer"]["add_prefix_space"] = true; }, "add_prefix_space");
  expect_bad_hf([](auto& j) { j["normalizer"] = {{"type", "NFC"}}; }, "normalizer");
  expect_bad_hf([](auto& j) { j["model"]["vocab"].erase("A"); }, "no token has id 32");
  expect_bad_hf([](auto& j) { j["added_tokens"].push_back({{"id", 259}, {"content", "<x>"}}); }, "id 259 is given to two added tokens");
  expect_bad_hf([](auto& j) { j["model"]["vocab"]["\xE2\x82\xAC"] = 261; }, "is not byte-level text");
  expect_bad_hf([](auto& j) { j["model"]["merges"][1] = "h e x"; }, "merges[1]", "one space");
  expect_bad_hf([](auto& j) { j["model"]["merges"][1] = "h q\xC4\xA0"; }, "merges[1]", "not in model.vocab");
  expect_bad_hf([](auto& j) { j["model"]["merges"][1] = 5; }, "merges[1] is neither");
  expect_bad_hf([](auto& j) { j["model"]["merges"].push_back("A B"); }, "merge 3", "not in the vocabulary");
  expect_bad_hf([](auto& j) { j["model"]["vocab"]["he"] = "x"; }, "model.vocab[he] is not an integer");
  expect_bad_hf([](auto& j) { j["model"].erase("merges"); }, "\"merges\" is missing");
  expect_bad_hf([](auto& j) { j["model"]["vocab"]["he"] = 2000000000; }, "not contiguous", "2000000000");
  expect_bad_hf([](auto& j) { j["model"]["vocab"]["he"] = -3; }, "negative id -3");
  expect_bad_hf([](auto& j) { j["model"]["byte_fallback"] = true; }, "byte_fallback");
}

}  // namespace
