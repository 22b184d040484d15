// kiln::Error and the checking helpers every op uses to report bad input.
//
// Messages name the op, the offending shapes/dtypes/devices and what was expected, e.g.
//   "kiln::add: shapes [2, 3] and [4] cannot be broadcast (dim -1: 3 vs 4)"
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

inline void append(std::ostringstream&) {}

template <class First, class... Rest>
void append(std::ostringstream& os, const First& first, const Rest&... rest) {
  if constexpr (std::is_same_v<First, std::vector<std::int64_t>>) {
    os << '[';
    for (std::size_t i = 0; i < first.size(); ++i) os << (i ? ", " : "") << first[i];
    os << ']';
  } else {
    os << first;
  }
  append(os, rest...);
}

}  // namespace detail

// Concatenates the arguments with operator<< (shapes print as [a, b, c]).
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

// Throws kiln::Error("kiln::<op>: <message>").
template <class... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  throw Error(str("kiln::", op, ": ", args...));
}

template <class... Args>
void check(bool condition, const char* op, const Args&... args) {
  if (!condition) fail(op, args...);
}

}  // namespace kiln
