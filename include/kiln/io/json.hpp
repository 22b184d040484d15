// JSON for kiln's file formats (safetensors headers, config.json, tokenizer.json, trainer.json):
// nlohmann/json (Debian's nlohmann-json3-dev; CMake target nlohmann_json::nlohmann_json), with one
// entry point for every reader of a file that may be hostile.
//
// parse_json(text, op, source) reads in two linear passes:
//   1. a SAX pass that builds nothing: it refuses nesting deeper than kMaxJsonDepth (a file of
//      100k '[' would otherwise give a DOM that copying, dumping or comparing recurses through
//      until the stack overflows) and a key repeated within one object (nlohmann keeps one of
//      them silently, so two entries could claim different things and a reader see a different
//      model than another tool). Its state is a stack of key sets, one per open object, so the
//      cost is linear in the text (a parser callback instead made nlohmann rescan the parent
//      object at every object end: quadratic, 129 s for a 100k-tensor safetensors header).
//   2. nlohmann's own iterative parser builds the DOM (it cannot fail after pass 1).
// Every failure is a kiln::Error naming the op, the file and the position, never an nlohmann
// exception.
//
// Error messages about a value from a file use describe_json(), which prints scalars (strings
// cut short) and only the kind and size of arrays and objects: dumping a value taken from a file
// into a message could be megabytes long.
//
// dump_json() writes a document and turns nlohmann's refusal of a string that is not valid
// UTF-8 into a kiln::Error naming the op and the file.
//
// kiln::io::json is the library's type with std::map objects (keys sorted when written);
// ordered_json keeps insertion order for files people read (config.json, trainer.json).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/core/error.hpp"

namespace kiln::io {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// Deepest nesting accepted (the top-level value is depth 1). Hugging Face config.json and
// tokenizer.json nest at most 6 levels; 64 leaves room and keeps every recursion shallow.
inline constexpr std::size_t kMaxJsonDepth = 64;

namespace detail {

// At most `limit` bytes of `s` (cut on a UTF-8 character boundary), "..." marking a cut.
inline std::string shortened(std::string_view s, std::size_t limit = 80) {
  if (s.size() <= limit) return std::string(s);
  std::size_t end = limit;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;  // continuation byte
  return std::string(s.substr(0, end)) + "...";
}

// The SAX pass of parse_json: depth and duplicate keys, no DOM.
class JsonStructureCheck {
 public:
  explicit JsonStructureCheck(std::size_t max_depth) : max_depth_(max_depth) {}

  // Set when the parse stopped: what went wrong and at which byte.
  std::string error;

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) {
    keys_.emplace_back();
    return enter();
  }
  bool key(json::string_t& k) {
    if (keys_.back().insert(k).second) return true;
    error = "the key \"" + shortened(k) + "\" appears twice in one object";
    return false;
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) { return enter(); }
  bool end_array() {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) {
    // nlohmann's message quotes the last token read, which may be a whole long string.
    error = "not valid JSON at byte " + std::to_string(position) + ": " + shortened(e.what(), 200);
    return false;
  }

 private:
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    error = "JSON nested deeper than " + std::to_string(max_depth_) + " levels";
    return false;
  }

  std::size_t max_depth_;
  std::size_t depth_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;  // one per open object
};

}  // namespace detail

// Parses `text` read from `source` (a path, or a description) for `op`; see the file comment.
template <class Json = json>
Json parse_json(std::string_view text, const char* op, const std::string& source, std::size_t max_depth = kMaxJsonDepth) {
  detail::JsonStructureCheck check(max_depth);
  if (!json::sax_parse(text, &check) || !check.error.empty())
    fail(op, source, ": ", check.error.empty() ? std::string("not valid JSON") : check.error);
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // unreachable after the SAX pass; kept as a guard
    fail(op, source, ": not valid JSON: ", detail::shortened(e.what(), 200));
  }
}

// A short description of a value for an error message: numbers, booleans and null as written,
// strings quoted and cut at 80 bytes, arrays and objects by kind and size only.
template <class Json>
std::string describe_json(const Json& v) {
  if (v.is_string()) return "\"" + detail::shortened(v.template get_ref<const std::string&>()) + "\"";
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " value" : " values");
  if (v.is_object()) return "an object of " + std::to_string(v.size()) + (v.size() == 1 ? " key" : " keys");
  if (v.is_binary()) return "binary data";
  return v.dump();  // number, boolean, null: short, and never invalid UTF-8
}

// j as text (indent as nlohmann's dump: -1 on one line); a string that is not valid UTF-8 is a
// kiln::Error naming op and `target` (nlohmann would throw its own type_error 316).
template <class Json>
std::string dump_json(const Json& j, const char* op, const std::string& target, int indent = -1) {
  try {
    return j.dump(indent);
  } catch (const nlohmann::json::exception& e) {
    fail(op, target, ": cannot write JSON: ", detail::shortened(e.what(), 200),
         " (strings must be valid UTF-8)");
  }
}

}  // namespace kiln::io
