// JSON for kiln's file formats (safetensors headers, config.json, trainer.json): nlohmann/json
// (Debian's nlohmann-json3-dev; CMake target nlohmann_json::nlohmann_json), a well-kept parser
// that validates UTF-8 and parses without recursion, so a hostile header cannot overflow the stack.
//
// kiln::io::json is the library's type with std::map objects (keys sorted when written);
// ordered_json keeps insertion order for files people read (config.json, trainer.json).
#pragma once

#include <nlohmann/json.hpp>

namespace kiln::io {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

}  // namespace kiln::io
