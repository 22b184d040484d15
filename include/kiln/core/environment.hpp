// Switches read from the environment (KILN_ATTENTION_FORWARD=plain, KILN_GROUPED_GEMM=plain, ...):
// comparisons of whole runs and escape hatches, documented where each is read.
#pragma once

#include <cstdlib>
#include <string_view>

namespace kiln {

// Whether environment variable `variable` is set to exactly `value`. No allocation, so that it
// may be read at each launch where tests switch a variable between calls.
inline bool environment_is(const char* variable, std::string_view value) {
  const char* v = std::getenv(variable);
  return v != nullptr && std::string_view(v) == value;
}

}  // namespace kiln
