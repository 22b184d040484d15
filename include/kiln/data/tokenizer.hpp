// Byte-level BPE tokenizer (GPT-2 style): training, encoding, decoding, kiln's JSON format, and
// loading a Hugging Face `tokenizer.json` of a byte-level BPE model.
//
// Vocabulary. Every byte 0..255 has a token, so any byte string (invalid UTF-8 included) encodes,
// and decode(encode(s)) == s exactly. Merges join two tokens into one; a merge's rank is its
// position in the merge list (lower = applied first). Added tokens (the special tokens: `<think>`,
// `</think>`, `<answer>`, `</answer>`, bos, eos, pad) are matched as whole strings in the input
// before anything else, so they are never split, and training never sees their text, so no merge
// produces them.
//
// Pre-tokenisation (kiln's splitter, regex-free and deterministic; merges never cross a word):
//   - byte classes: letters are ASCII letters and every byte >= 0x80 (so UTF-8 letters, and any
//     other non-ASCII text, stay inside words); digits '0'..'9'; whitespace ' ' \t \n \r \v \f;
//     everything else is punctuation;
//   - a word is a run of letters, a run of digits, or one punctuation byte, optionally preceded
//     by ONE space (' ' only), as in GPT-2's " word";
//   - a run of whitespace followed by a word gives all but its last byte as one piece, and the
//     last byte either joins the word (a space) or stands alone (any other whitespace); a run
//     at the end of the text is one piece. This matches GPT-2's `\s+(?!\S)|\s+` on ASCII.
//   Example: "Hi  there,\n\n42!" -> "Hi" " " " there" "," "\n" "\n" "42" "!".
//   It differs from GPT-2's regex in that contractions ('s) are not special, punctuation is
//   split byte by byte, and non-ASCII punctuation counts as a letter; a Hugging Face tokenizer
//   loaded here uses this splitter too, so its ids can differ from transformers' on such text
//   (the same merges apply within each word, and decoding is always exact).
//
// Encoding applies merges in rank order within each word (the lowest-rank adjacent pair first,
// leftmost among equals; a linked list and a heap make it O(n log n) per word); merge ranks live
// in a hash map and encoded words are cached (the cache is guarded by a mutex, so a const
// Tokenizer may be used from several threads).
//
// Training (Tokenizer::train) counts the words of the corpus (after removing added tokens), then
// repeatedly merges the most frequent adjacent pair of tokens over all words (pairs are counted at
// every adjacent position; ties go to the smallest (left id, right id)), replacing non-overlapping
// occurrences left to right, until the vocabulary is full or no pair occurs min_frequency times.
// Ids of a trained tokenizer: 0..255 are the bytes, then the added tokens in the order bos, eos,
// pad, others, then the merged tokens in merge order.
//
// Files. save() writes kiln's JSON format (atomically):
//   {"format": "kiln-bpe-tokenizer", "version": 1, "pre_tokenizer": "kiln-words-v1",
//    "ignore_merges": false,
//    "vocab": [token of id 0, token of id 1, ...]      (bytes written with GPT-2's byte-to-unicode
//                                                       map, so the file is valid UTF-8),
//    "merges": [[left id, right id], ...]             (in rank order; the result is the token
//                                                       whose bytes are the concatenation),
//    "added_tokens": [{"id", "content" (byte-level text too), "special", "in_vocab"}, ...],
//    "bos": id or null, "eos": id or null, "pad": id or null}
// load() reads that format or a Hugging Face tokenizer.json (model.type "BPE", model.vocab
// {byte-level token: id}, model.merges as "a b" strings or [a, b] pairs, added_tokens with
// "special" flags, pre_tokenizer ByteLevel alone or in a Sequence). Settings that would change
// the ids silently (a normalizer, add_prefix_space, byte_fallback, subword prefixes/suffixes) are
// reported as unsupported. bos/eos/pad of a Hugging Face file are the added tokens named like
// SpecialTokens' defaults when present (tokenizer.json does not say); set_special_roles() names
// others.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kiln/core/error.hpp"
#include "kiln/io/file.hpp"
#include "kiln/io/json.hpp"

namespace kiln::data {

// The added tokens of a tokenizer. An empty bos/eos/pad means the tokenizer has no such role.
struct SpecialTokens {
  std::string bos = "<|begin_of_text|>";
  std::string eos = "<|end_of_text|>";
  std::string pad = "<|pad|>";
  std::vector<std::string> others = {"<think>", "</think>", "<answer>", "</answer>"};
};

namespace bpe {

// GPT-2's reversible map from bytes to printable Unicode characters: the printable bytes '!'..'~',
// 0xA1..0xAC and 0xAE..0xFF map to themselves, the other 68 bytes (controls, space, 0x7F..0xA0,
// 0xAD) to U+0100, U+0101, ... in byte order. Byte-level vocabularies write tokens this way.
inline const std::array<char32_t, 256>& bytes_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// Bytes -> their byte-level text (UTF-8; every mapped character is below U+0800, so 1 or 2 bytes).
inline std::string byte_level_encode(std::string_view bytes) {
  const auto& map = bytes_to_unicode();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const char32_t u = map[static_cast<unsigned char>(c)];
    if (u < 0x80) {
      out.push_back(static_cast<char>(u));
    } else {
      out.push_back(static_cast<char>(0xC0 | (u >> 6)));
      out.push_back(static_cast<char>(0x80 | (u & 0x3F)));
    }
  }
  return out;
}

// Byte-level text -> bytes; nullopt if the text is not UTF-8 or holds a character outside the map.
inline std::optional<std::string> byte_level_decode(std::string_view text) {
  static const std::array<int, 324> inverse = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    const auto& map = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) inv[map[static_cast<std::size_t>(b)]] = b;
    return inv;
  }();
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto c0 = static_cast<unsigned char>(text[i]);
    char32_t u;
    if (c0 < 0x80) {
      u = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80) {
      u = (static_cast<char32_t>(c0 & 0x1F) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;  // 3- and 4-byte characters are all outside the map
    }
    if (u >= inverse.size() || inverse[u] < 0) return std::nullopt;
    out.push_back(static_cast<char>(inverse[u]));
  }
  return out;
}

enum class ByteClass { letter, digit, space, punct };

inline ByteClass classify(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return ByteClass::letter;
  if (c >= '0' && c <= '9') return ByteClass::digit;
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') return ByteClass::space;
  return ByteClass::punct;
}

// kiln's pre-tokenizer (the rules are in the header comment). The pieces concatenate to `text`.
inline std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  const std::size_t n = text.size();
  auto cls = [&](std::size_t i) { return classify(static_cast<unsigned char>(text[i])); };
  std::size_t i = 0;
  while (i < n) {
    std::size_t start = i;
    if (cls(i) == ByteClass::space) {
      std::size_t j = i;
      while (j < n && cls(j) == ByteClass::space) ++j;
      if (j == n) {
        words.push_back(text.substr(i, j - i));
        break;
      }
      if (j - i > 1) words.push_back(text.substr(i, j - 1 - i));
      if (text[j - 1] != ' ') {
        words.push_back(text.substr(j - 1, 1));
        i = j;
        continue;
      }
      start = j - 1;  // the space joins the word that follows
      i = j;
    }
    const ByteClass k = cls(i);
    std::size_t e = i + 1;
    if (k != ByteClass::punct)
      while (e < n && cls(e) == k) ++e;
    words.push_back(text.substr(start, e - start));
    i = e;
  }
  return words;
}

}  // namespace bpe

class Tokenizer {
 public:
  // The 256 byte tokens and the added tokens of `specials`; no merges.
  explicit Tokenizer(const SpecialTokens& specials = {}) {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
    std::vector<Added> added;
    for (const std::string* s : {&specials.bos, &specials.eos, &specials.pad})
      if (!s->empty()) added.push_back({*s, static_cast<std::int64_t>(tokens.size() + added.size()), true, false});
    for (const std::string& s : specials.others)
      added.push_back({s, static_cast<std::int64_t>(tokens.size() + added.size()), true, false});
    for (const Added& a : added) tokens.push_back(a.content);
    build(std::move(tokens), {}, std::move(added), false, "Tokenizer", "special tokens");
    set_special_roles(specials.bos, specials.eos, specials.pad);
  }

  // Learns merges on `corpus` until the vocabulary (bytes + added tokens + merges) has
  // `vocab_size` tokens or no adjacent pair occurs `min_frequency` times.
  static Tokenizer train(std::string_view corpus, std::int64_t vocab_size, const SpecialTokens& specials = {},
                         std::int64_t min_frequency = 2);

  // Text -> ids. Added tokens in the text are matched first (the longest at each position) unless
  // allow_added is false, in which case their text is encoded like any other.
  std::vector<std::int64_t> encode(std::string_view text, bool allow_added = true) const {
    std::vector<std::int64_t> out;
    out.reserve(text.size() / 3 + 1);
    std::size_t start = 0;
    if (allow_added && !added_.empty()) {
      for (std::size_t pos = 0; pos < text.size();) {
        const std::int64_t hit = match_added(text, pos);
        if (hit < 0) {
          ++pos;
          continue;
        }
        encode_ordinary(text.substr(start, pos - start), out);
        out.push_back(hit);
        pos += tokens_[static_cast<std::size_t>(hit)].size();
        start = pos;
      }
    }
    encode_ordinary(text.substr(start), out);
    return out;
  }

  // Ids -> bytes. An id outside [0, vocab_size()) is an error; skip_special drops special tokens.
  std::string decode(std::span<const std::int64_t> ids, bool skip_special = false) const {
    std::string out;
    for (const std::int64_t id : ids) {
      check_id(id, "Tokenizer::decode");
      if (skip_special && kind_[static_cast<std::size_t>(id)] == Kind::special) continue;
      out += tokens_[static_cast<std::size_t>(id)];
    }
    return out;
  }

  std::int64_t vocab_size() const { return static_cast<std::int64_t>(tokens_.size()); }
  std::int64_t num_merges() const { return static_cast<std::int64_t>(merge_list_.size()); }
  // The merges in rank order, as (left id, right id).
  const std::vector<std::pair<std::int64_t, std::int64_t>>& merges() const { return merge_list_; }

  std::optional<std::int64_t> bos_id() const { return bos_; }
  std::optional<std::int64_t> eos_id() const { return eos_; }
  std::optional<std::int64_t> pad_id() const { return pad_; }

  // The bytes of token `id`.
  const std::string& token_bytes(std::int64_t id) const {
    check_id(id, "Tokenizer::token_bytes");
    return tokens_[static_cast<std::size_t>(id)];
  }
  // The id of an added token with this content, else of the vocabulary token with these bytes.
  std::optional<std::int64_t> token_id(std::string_view token) const {
    for (const Added& a : added_)
      if (a.content == token) return a.id;
    const auto it = ids_.find(std::string(token));
    if (it != ids_.end()) return it->second;
    return std::nullopt;
  }
  bool is_added(std::int64_t id) const {
    check_id(id, "Tokenizer::is_added");
    return kind_[static_cast<std::size_t>(id)] != Kind::model;
  }
  bool is_special(std::int64_t id) const {
    check_id(id, "Tokenizer::is_special");
    return kind_[static_cast<std::size_t>(id)] == Kind::special;
  }

  // Names the added tokens that serve as bos/eos/pad ("" = none). An unknown name is an error.
  void set_special_roles(std::string_view bos, std::string_view eos, std::string_view pad) {
    auto role = [&](std::string_view name, const char* what) -> std::optional<std::int64_t> {
      if (name.empty()) return std::nullopt;
      for (const Added& a : added_)
        if (a.content == name) return a.id;
      fail("Tokenizer::set_special_roles", what, " token \"", name, "\" is not an added token of this tokenizer");
    };
    bos_ = role(bos, "bos");
    eos_ = role(eos, "eos");
    pad_ = role(pad, "pad");
  }

  // kiln's JSON format (see the header comment).
  io::json to_json() const {
    io::json j;
    j["format"] = "kiln-bpe-tokenizer";
    j["version"] = 1;
    j["pre_tokenizer"] = "kiln-words-v1";
    j["ignore_merges"] = ignore_merges_;
    io::json vocab = io::json::array();
    for (const std::string& t : tokens_) vocab.push_back(bpe::byte_level_encode(t));
    j["vocab"] = std::move(vocab);
    io::json merges = io::json::array();
    for (const auto& [l, r] : merge_list_) merges.push_back({l, r});
    j["merges"] = std::move(merges);
    io::json added = io::json::array();
    for (const Added& a : added_)
      added.push_back({{"id", a.id}, {"content", bpe::byte_level_encode(a.content)}, {"special", a.special},
                       {"in_vocab", a.in_vocab}});
    j["added_tokens"] = std::move(added);
    auto opt = [](const std::optional<std::int64_t>& v) { return v ? io::json(*v) : io::json(nullptr); };
    j["bos"] = opt(bos_);
    j["eos"] = opt(eos_);
    j["pad"] = opt(pad_);
    return j;
  }

  void save(const std::string& path) const {
    io::write_file_atomically(path, io::dump_json(to_json(), "Tokenizer::save", path, 1) + "\n", "Tokenizer::save");
  }

  // Reads kiln's format or a Hugging Face tokenizer.json (told apart by the "format" key).
  static Tokenizer load(const std::string& path) {
    return from_json(io::parse_json(io::read_text_file(path, "Tokenizer::load"), "Tokenizer::load", path), path);
  }

  // `source` names the file in error messages.
  static Tokenizer from_json(const io::json& j, const std::string& source) {
    try {
      if (!j.is_object()) load_error(source, "the top level is not a JSON object");
      if (j.contains("format")) return from_kiln_json(j, source);
      if (j.contains("model")) return from_hf_json(j, source);
      load_error(source, "neither a kiln tokenizer (no \"format\") nor a Hugging Face tokenizer.json (no \"model\")");
    } catch (const io::json::exception& e) {
      load_error(source, e.what());
    }
  }

 private:
  enum class Kind : std::uint8_t { model, added, special };
  struct Added {
    std::string content;
    std::int64_t id;
    bool special;
    bool in_vocab;  // also a token of the BPE vocabulary (Hugging Face lists some tokens in both)
  };
  struct MergeInfo {
    std::int64_t rank, id;
  };
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int64_t>> words;
  };
  static constexpr std::size_t cache_limit = std::size_t(1) << 18;  // words; cleared when full

  std::vector<std::string> tokens_;  // id -> bytes
  std::vector<Kind> kind_;
  std::unordered_map<std::string, std::int64_t> ids_;  // bytes -> id, BPE vocabulary only
  std::array<std::int64_t, 256> byte_ids_{};
  std::unordered_map<std::uint64_t, MergeInfo> merges_;  // (left << 32 | right) -> rank, result
  std::vector<std::pair<std::int64_t, std::int64_t>> merge_list_;
  std::vector<Added> added_;
  std::array<std::vector<std::size_t>, 256> added_by_first_byte_;  // indices into added_, longest first
  std::optional<std::int64_t> bos_, eos_, pad_;
  bool ignore_merges_ = false;
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();

  static std::uint64_t pair_key(std::int64_t l, std::int64_t r) {
    return (static_cast<std::uint64_t>(l) << 32) | static_cast<std::uint64_t>(r);
  }

  [[noreturn]] static void load_error(const std::string& source, const std::string& problem) {
    fail("Tokenizer::load", source, ": ", problem);
  }

  void check_id(std::int64_t id, const char* op) const {
    if (id < 0 || id >= vocab_size()) fail(op, "token id ", id, " is out of range [0, ", vocab_size(), ")");
  }

  // Validates and indexes a vocabulary: tokens (id -> bytes), merges (rank order), added tokens.
  // `op` and `source` name the caller and the file in errors.
  void build(std::vector<std::string> tokens, std::vector<std::pair<std::int64_t, std::int64_t>> merges,
             std::vector<Added> added, bool ignore_merges, const char* op, const std::string& source) {
    auto bad = [&](const auto&... what) { fail(op, source, ": ", what...); };
    const auto n = static_cast<std::int64_t>(tokens.size());
    if (n >= (std::int64_t(1) << 31)) bad("vocabulary of ", n, " tokens is too large");
    tokens_ = std::move(tokens);
    kind_.assign(tokens_.size(), Kind::model);
    for (const Added& a : added) {
      if (a.content.empty()) bad("an added token has empty content");
      if (a.id < 0 || a.id >= n) bad("added token \"", a.content, "\" has id ", a.id, " outside [0, ", n, ")");
      const auto i = static_cast<std::size_t>(a.id);
      if (kind_[i] != Kind::model) bad("id ", a.id, " is given to two added tokens");
      if (tokens_[i] != a.content) bad("added token \"", a.content, "\" and vocabulary entry ", a.id, " differ");
      for (const Added& b : added)
        if (&b != &a && b.content == a.content) bad("added token \"", a.content, "\" appears twice");
      kind_[i] = a.special ? Kind::special : Kind::added;
    }
    ids_.clear();
    for (std::int64_t id = 0; id < n; ++id) {
      const auto i = static_cast<std::size_t>(id);
      const bool in_vocab = kind_[i] == Kind::model ||
                            std::any_of(added.begin(), added.end(), [&](const Added& a) { return a.id == id && a.in_vocab; });
      if (!in_vocab) continue;
      if (tokens_[i].empty()) bad("token ", id, " is empty");
      const auto [it, fresh] = ids_.emplace(tokens_[i], id);
      if (!fresh) bad("tokens ", it->second, " and ", id, " have the same bytes \"", bpe::byte_level_encode(tokens_[i]), "\"");
    }
    for (int b = 0; b < 256; ++b) {
      const auto it = ids_.find(std::string(1, static_cast<char>(b)));
      if (it == ids_.end()) bad("no token for byte ", b, ": not a byte-level vocabulary");
      byte_ids_[static_cast<std::size_t>(b)] = it->second;
    }
    merges_.clear();
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto [l, r] = merges[rank];
      if (l < 0 || l >= n || r < 0 || r >= n) bad("merge ", rank, " has an id outside [0, ", n, ")");
      const auto li = static_cast<std::size_t>(l), ri = static_cast<std::size_t>(r);
      if (kind_[li] != Kind::model || kind_[ri] != Kind::model) bad("merge ", rank, " uses an added token");
      const auto it = ids_.find(tokens_[li] + tokens_[ri]);
      if (it == ids_.end())
        bad("merge ", rank, " (\"", bpe::byte_level_encode(tokens_[li]), "\" \"", bpe::byte_level_encode(tokens_[ri]),
            "\") makes a token that is not in the vocabulary");
      merges_.emplace(pair_key(l, r), MergeInfo{static_cast<std::int64_t>(rank), it->second});  // first rank wins
    }
    merge_list_ = std::move(merges);
    added_ = std::move(added);
    for (auto& v : added_by_first_byte_) v.clear();
    for (std::size_t k = 0; k < added_.size(); ++k)
      added_by_first_byte_[static_cast<unsigned char>(added_[k].content[0])].push_back(k);
    for (auto& v : added_by_first_byte_)
      std::stable_sort(v.begin(), v.end(),
                       [&](std::size_t a, std::size_t b) { return added_[a].content.size() > added_[b].content.size(); });
    ignore_merges_ = ignore_merges;
    bos_ = eos_ = pad_ = std::nullopt;
    cache_ = std::make_shared<Cache>();
  }

  // The id of the longest added token that starts at text[pos], or -1.
  std::int64_t match_added(std::string_view text, std::size_t pos) const {
    for (const std::size_t k : added_by_first_byte_[static_cast<unsigned char>(text[pos])])
      if (text.substr(pos).starts_with(added_[k].content)) return added_[k].id;
    return -1;
  }

  void encode_ordinary(std::string_view text, std::vector<std::int64_t>& out) const {
    for (const std::string_view word : bpe::split_words(text)) encode_word(word, out);
  }

  void encode_word(std::string_view word, std::vector<std::int64_t>& out) const {
    if (word.size() == 1) {
      out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
      return;
    }
    const std::string key(word);
    {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      const auto it = cache_->words.find(key);
      if (it != cache_->words.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<std::int64_t> ids = bpe_word(word);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() >= cache_limit) cache_->words.clear();
    cache_->words.emplace(key, std::move(ids));
  }

  // Merges within one word: a doubly linked list of symbols and a min-heap of candidate pairs
  // keyed by (rank, position). A heap entry is stale when either symbol has changed since; the
  // rank check catches that, because a rank names exactly one pair.
  std::vector<std::int64_t> bpe_word(std::string_view word) const {
    if (ignore_merges_) {
      const auto it = ids_.find(std::string(word));
      if (it != ids_.end()) return {it->second};
    }
    struct Symbol {
      std::int64_t id;
      std::int64_t prev, next;  // -1 at the ends
      bool alive;
    };
    struct Candidate {
      std::int64_t rank, pos;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    const auto n = static_cast<std::int64_t>(word.size());
    std::vector<Symbol> sym(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)
      sym[static_cast<std::size_t>(i)] = {byte_ids_[static_cast<unsigned char>(word[static_cast<std::size_t>(i)])], i - 1,
                                          i + 1 < n ? i + 1 : -1, true};
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto rank_of = [&](std::int64_t pos) -> const MergeInfo* {
      const Symbol& s = sym[static_cast<std::size_t>(pos)];
      if (!s.alive || s.next < 0) return nullptr;
      const auto it = merges_.find(pair_key(s.id, sym[static_cast<std::size_t>(s.next)].id));
      return it == merges_.end() ? nullptr : &it->second;
    };
    auto offer = [&](std::int64_t pos) {
      if (pos < 0) return;
      if (const MergeInfo* m = rank_of(pos)) heap.push({m->rank, pos});
    };
    for (std::int64_t i = 0; i + 1 < n; ++i) offer(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const MergeInfo* m = rank_of(c.pos);
      if (m == nullptr || m->rank != c.rank) continue;
      Symbol& left = sym[static_cast<std::size_t>(c.pos)];
      Symbol& right = sym[static_cast<std::size_t>(left.next)];
      left.id = m->id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) sym[static_cast<std::size_t>(right.next)].prev = c.pos;
      offer(left.prev);
      offer(c.pos);
    }
    std::vector<std::int64_t> ids;
    for (std::int64_t i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next) ids.push_back(sym[static_cast<std::size_t>(i)].id);
    return ids;
  }

  static const io::json& field(const io::json& j, const char* key, const std::string& source, const char* where) {
    if (!j.contains(key)) load_error(source, str(where, "\"", key, "\" is missing"));
    return j.at(key);
  }

  static std::int64_t id_value(const io::json& v, const std::string& source, const std::string& what) {
    if (!v.is_number_integer()) load_error(source, str(what, " is not an integer"));
    return v.get<std::int64_t>();
  }

  static Tokenizer from_kiln_json(const io::json& j, const std::string& source) {
    if (j.at("format") != "kiln-bpe-tokenizer") load_error(source, str("unknown \"format\" ", io::describe_json(j.at("format"))));
    if (j.value("version", io::json()) != 1) load_error(source, "unsupported \"version\" (kiln reads version 1)");
    if (j.value("pre_tokenizer", io::json()) != "kiln-words-v1")
      load_error(source, "unknown \"pre_tokenizer\" (kiln knows \"kiln-words-v1\")");
    const io::json& vocab = field(j, "vocab", source, "");
    if (!vocab.is_array()) load_error(source, "\"vocab\" is not an array");
    std::vector<std::string> tokens;
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      if (!vocab[i].is_string()) load_error(source, str("vocab[", i, "] is not a string"));
      auto bytes = bpe::byte_level_decode(vocab[i].get<std::string>());
      if (!bytes) load_error(source, str("vocab[", i, "] is not byte-level text"));
      tokens.push_back(std::move(*bytes));
    }
    const io::json& merges_json = field(j, "merges", source, "");
    if (!merges_json.is_array()) load_error(source, "\"merges\" is not an array");
    std::vector<std::pair<std::int64_t, std::int64_t>> merges;
    for (std::size_t i = 0; i < merges_json.size(); ++i) {
      const io::json& m = merges_json[i];
      if (!m.is_array() || m.size() != 2) load_error(source, str("merges[", i, "] is not a pair of ids"));
      const std::int64_t l = id_value(m[0], source, str("merges[", i, "][0]"));
      merges.emplace_back(l, id_value(m[1], source, str("merges[", i, "][1]")));
    }
    std::vector<Added> added;
    const io::json& added_json = field(j, "added_tokens", source, "");
    if (!added_json.is_array()) load_error(source, "\"added_tokens\" is not an array");
    for (std::size_t i = 0; i < added_json.size(); ++i) {
      const io::json& a = added_json[i];
      const std::string where = str("added_tokens[", i, "]");
      if (!a.is_object()) load_error(source, where + " is not an object");
      const io::json& content = field(a, "content", source, (where + ": ").c_str());
      if (!content.is_string()) load_error(source, where + ".content is not a string");
      auto bytes = bpe::byte_level_decode(content.get<std::string>());
      if (!bytes) load_error(source, where + ".content is not byte-level text");
      const io::json& special = field(a, "special", source, (where + ": ").c_str());
      const io::json& in_vocab = field(a, "in_vocab", source, (where + ": ").c_str());
      if (!special.is_boolean() || !in_vocab.is_boolean()) load_error(source, where + ": special/in_vocab are not booleans");
      added.push_back({std::move(*bytes), id_value(field(a, "id", source, (where + ": ").c_str()), source, where + ".id"),
                       special.get<bool>(), in_vocab.get<bool>()});
    }
    const io::json& ignore = j.value("ignore_merges", io::json(false));
    if (!ignore.is_boolean()) load_error(source, "\"ignore_merges\" is not a boolean");
    Tokenizer t(no_init{});
    t.build(std::move(tokens), std::move(merges), std::move(added), ignore.get<bool>(), "Tokenizer::load", source);
    auto role = [&](const char* key) -> std::optional<std::int64_t> {
      const io::json& v = j.value(key, io::json());
      if (v.is_null()) return std::nullopt;
      const std::int64_t id = id_value(v, source, str("\"", key, "\""));
      if (id < 0 || id >= t.vocab_size() || t.kind_[static_cast<std::size_t>(id)] == Kind::model)
        load_error(source, str("\"", key, "\" (", id, ") is not the id of an added token"));
      return id;
    };
    t.bos_ = role("bos");
    t.eos_ = role("eos");
    t.pad_ = role("pad");
    return t;
  }

  // Hugging Face tokenizer.json of a byte-level BPE model.
  static Tokenizer from_hf_json(const io::json& j, const std::string& source) {
    auto unsupported = [&](const std::string& what) {
      load_error(source, what + ": not supported by kiln's byte-level BPE (it would change the ids)");
    };
    if (j.contains("normalizer") && !j.at("normalizer").is_null()) unsupported("a \"normalizer\"");
    // The pre-tokenizer must be ByteLevel (alone or in a Sequence) without add_prefix_space.
    const io::json& pre = j.value("pre_tokenizer", io::json());
    bool byte_level = false;
    auto check_pre = [&](const io::json& p) {
      if (!p.is_object() || p.value("type", "") != "ByteLevel") return;
      byte_level = true;
      if (p.value("add_prefix_space", false)) unsupported("ByteLevel add_prefix_space = true");
    };
    if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
        pre.at("pretokenizers").is_array()) {
      for (const io::json& p : pre.at("pretokenizers")) check_pre(p);
    } else {
      check_pre(pre);
    }
    if (!byte_level) load_error(source, "\"pre_tokenizer\" is not ByteLevel: not a byte-level BPE tokenizer");

    const io::json& model = j.at("model");
    if (!model.is_object()) load_error(source, "\"model\" is not an object");
    if (model.contains("type") && model.at("type") != "BPE")
      load_error(source, str("model.type is ", io::describe_json(model.at("type")), ", expected \"BPE\""));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(key) && !model.at(key).is_null() && model.at(key) != "") unsupported(str("model.", key));
    if (model.value("byte_fallback", false)) unsupported("model.byte_fallback");
    const bool ignore_merges = model.value("ignore_merges", false);

    // Added tokens first: their content is raw text, not byte-level.
    std::vector<Added> added;
    if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
      const io::json& list = j.at("added_tokens");
      if (!list.is_array()) load_error(source, "\"added_tokens\" is not an array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        const io::json& a = list[i];
        const std::string where = str("added_tokens[", i, "]");
        if (!a.is_object()) load_error(source, where + " is not an object");
        const io::json& content = field(a, "content", source, (where + ": ").c_str());
        if (!content.is_string()) load_error(source, where + ".content is not a string");
        const io::json& special = a.value("special", io::json(false));
        if (!special.is_boolean()) load_error(source, where + ".special is not a boolean");
        added.push_back({content.get<std::string>(), id_value(field(a, "id", source, (where + ": ").c_str()), source, where + ".id"),
                         special.get<bool>(), false});
      }
    }
    const io::json& vocab = field(model, "vocab", source, "model: ");
    if (!vocab.is_object()) load_error(source, "model.vocab is not an object {token: id}");
    std::int64_t max_id = -1;
    for (const Added& a : added) max_id = std::max(max_id, a.id);
    for (auto it = vocab.begin(); it != vocab.end(); ++it)
      max_id = std::max(max_id, id_value(it.value(), source, str("model.vocab[", it.key(), "]")));
    // Ids must be 0..n-1; checking the largest first keeps a stray huge id from allocating.
    if (max_id >= static_cast<std::int64_t>(vocab.size() + added.size()))
      load_error(source, str("ids are not contiguous: id ", max_id, " with only ", vocab.size(), " vocabulary and ",
                             added.size(), " added tokens"));
    std::vector<std::string> tokens(static_cast<std::size_t>(max_id + 1));
    std::vector<char> filled(tokens.size(), 0);
    std::vector<std::pair<std::string, std::int64_t>> model_tokens;  // byte-level text, id
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::int64_t id = it.value().get<std::int64_t>();
      if (id < 0) load_error(source, str("model.vocab[", it.key(), "] has negative id ", id));
      auto added_it = std::find_if(added.begin(), added.end(), [&](const Added& a) { return a.id == id; });
      std::string bytes;
      if (added_it != added.end()) {
        added_it->in_vocab = true;  // an added token listed in the vocabulary too: its content is its text
        bytes = added_it->content;
      } else {
        auto decoded = bpe::byte_level_decode(it.key());
        if (!decoded) load_error(source, str("model.vocab token \"", it.key(), "\" is not byte-level text"));
        bytes = std::move(*decoded);
      }
      if (filled[static_cast<std::size_t>(id)]) load_error(source, str("id ", id, " appears twice in model.vocab"));
      filled[static_cast<std::size_t>(id)] = 1;
      tokens[static_cast<std::size_t>(id)] = std::move(bytes);
      model_tokens.emplace_back(it.key(), id);
    }
    for (const Added& a : added) {
      if (a.id < 0) load_error(source, str("added token \"", a.content, "\" has negative id ", a.id));
      if (!filled[static_cast<std::size_t>(a.id)]) {
        filled[static_cast<std::size_t>(a.id)] = 1;
        tokens[static_cast<std::size_t>(a.id)] = a.content;
      }
    }
    for (std::size_t id = 0; id < filled.size(); ++id)
      if (!filled[id]) load_error(source, str("ids are not contiguous: no token has id ", id));

    std::unordered_map<std::string, std::int64_t> by_text;  // byte-level text -> id, for merges
    for (const auto& [text, id] : model_tokens) by_text.emplace(text, id);
    const io::json& merges_json = field(model, "merges", source, "model: ");
    if (!merges_json.is_array()) load_error(source, "model.merges is not an array");
    std::vector<std::pair<std::int64_t, std::int64_t>> merges;
    auto lookup = [&](const std::string& text, std::size_t i) {
      const auto it = by_text.find(text);
      if (it == by_text.end()) load_error(source, str("model.merges[", i, "]: \"", text, "\" is not in model.vocab"));
      return it->second;
    };
    for (std::size_t i = 0; i < merges_json.size(); ++i) {
      const io::json& m = merges_json[i];
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const std::size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          load_error(source, str("model.merges[", i, "] \"", s, "\" is not two tokens separated by one space"));
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        load_error(source, str("model.merges[", i, "] is neither \"a b\" nor [\"a\", \"b\"]"));
      }
      const std::int64_t l = lookup(a, i);
      merges.emplace_back(l, lookup(b, i));
    }
    Tokenizer t(no_init{});
    t.build(std::move(tokens), std::move(merges), std::move(added), ignore_merges, "Tokenizer::load", source);
    const SpecialTokens defaults;
    auto role = [&](const std::string& name) -> std::optional<std::int64_t> {
      for (const Added& a : t.added_)
        if (a.content == name) return a.id;
      return std::nullopt;
    };
    t.bos_ = role(defaults.bos);
    t.eos_ = role(defaults.eos);
    t.pad_ = role(defaults.pad);
    return t;
  }

  struct no_init {};
  explicit Tokenizer(no_init) {}
};

inline Tokenizer Tokenizer::train(std::string_view corpus, std::int64_t vocab_size, const SpecialTokens& specials,
                                  std::int64_t min_frequency) {
  Tokenizer base(specials);
  const std::int64_t first_id = base.vocab_size();
  check(vocab_size >= first_id, "Tokenizer::train", "vocab_size ", vocab_size, " is smaller than the ", first_id,
        " bytes and added tokens");
  check(vocab_size < (std::int64_t(1) << 31), "Tokenizer::train", "vocab_size ", vocab_size, " is too large");
  check(min_frequency >= 1, "Tokenizer::train", "min_frequency ", min_frequency, " must be at least 1");

  // Word counts, with added tokens cut out of the text.
  std::unordered_map<std::string, std::int64_t> word_counts;
  auto count_words = [&](std::string_view text) {
    for (const std::string_view w : bpe::split_words(text)) ++word_counts[std::string(w)];
  };
  std::size_t start = 0;
  for (std::size_t pos = 0; pos < corpus.size();) {
    const std::int64_t hit = base.match_added(corpus, pos);
    if (hit < 0) {
      ++pos;
      continue;
    }
    count_words(corpus.substr(start, pos - start));
    pos += base.tokens_[static_cast<std::size_t>(hit)].size();
    start = pos;
  }
  count_words(corpus.substr(start));

  std::vector<std::vector<std::int64_t>> words;
  std::vector<std::int64_t> counts;
  for (const auto& [w, c] : word_counts) {
    if (w.size() < 2) continue;  // no pairs
    std::vector<std::int64_t> ids;
    for (const char ch : w) ids.push_back(static_cast<unsigned char>(ch));
    words.push_back(std::move(ids));
    counts.push_back(c);
  }

  // Pair counts, the words each pair occurs in (may list a word twice or after it stopped
  // holding the pair: those are skipped), and a max-heap of (count, pair) with lazy updates:
  // counts only fall except for pairs with the newest token, which are pushed after each merge,
  // so an entry whose count is out of date is re-pushed with the current count when it surfaces.
  std::unordered_map<std::uint64_t, std::int64_t> pair_count;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> where;
  for (std::size_t w = 0; w < words.size(); ++w)
    for (std::size_t i = 0; i + 1 < words[w].size(); ++i) {
      const std::uint64_t key = pair_key(words[w][i], words[w][i + 1]);
      pair_count[key] += counts[w];
      auto& list = where[key];
      if (list.empty() || list.back() != w) list.push_back(static_cast<std::uint32_t>(w));
    }
  struct Entry {
    std::int64_t count;
    std::uint64_t key;
    bool operator<(const Entry& o) const { return count != o.count ? count < o.count : key > o.key; }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [key, c] : pair_count) heap.push({c, key});

  std::vector<std::string> tokens = base.tokens_;
  std::unordered_map<std::string, std::int64_t> known;  // bytes -> id of the BPE vocabulary
  for (std::int64_t b = 0; b < 256; ++b) known.emplace(tokens[static_cast<std::size_t>(b)], b);
  std::vector<std::pair<std::int64_t, std::int64_t>> merges;
  std::vector<std::int64_t> stamp(words.size(), -1);
  std::vector<std::int64_t> merged;
  while (static_cast<std::int64_t>(tokens.size()) < vocab_size && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    const auto found = pair_count.find(top.key);
    const std::int64_t current = found == pair_count.end() ? 0 : found->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current < min_frequency) break;
    const auto a = static_cast<std::int64_t>(top.key >> 32), b = static_cast<std::int64_t>(top.key & 0xFFFFFFFFu);
    // Two merge paths can spell the same bytes ("a"+"bc", "ab"+"c"): the second reuses the token.
    std::string bytes = tokens[static_cast<std::size_t>(a)] + tokens[static_cast<std::size_t>(b)];
    const auto [known_it, fresh] = known.emplace(std::move(bytes), static_cast<std::int64_t>(tokens.size()));
    const std::int64_t c = known_it->second;
    if (fresh) tokens.push_back(known_it->first);
    const auto step = static_cast<std::int64_t>(merges.size());
    merges.emplace_back(a, b);
    std::vector<std::uint64_t> touched;  // pairs with the new token
    const std::vector<std::uint32_t> holders = std::move(where[top.key]);
    where.erase(top.key);
    for (const std::uint32_t w : holders) {
      if (stamp[w] == step) continue;
      stamp[w] = step;
      std::vector<std::int64_t>& ids = words[w];
      merged.clear();
      for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && ids[i] == a && ids[i + 1] == b) {
          merged.push_back(c);
          ++i;
        } else {
          merged.push_back(ids[i]);
        }
      }
      if (merged.size() == ids.size()) continue;
      for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
        const std::uint64_t key = pair_key(ids[i], ids[i + 1]);
        if ((pair_count[key] -= counts[w]) == 0) pair_count.erase(key);
      }
      for (std::size_t i = 0; i + 1 < merged.size(); ++i) {
        const std::uint64_t key = pair_key(merged[i], merged[i + 1]);
        pair_count[key] += counts[w];
        if (merged[i] == c || merged[i + 1] == c) {
          auto& list = where[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          touched.push_back(key);
        }
      }
      ids = merged;
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (const std::uint64_t key : touched) heap.push({pair_count[key], key});
  }

  Tokenizer t(no_init{});
  t.build(std::move(tokens), std::move(merges), base.added_, false, "Tokenizer::train", "corpus");
  t.bos_ = base.bos_;
  t.eos_ = base.eos_;
  t.pad_ = base.pad_;
  return t;
}

}  // namespace kiln::data
