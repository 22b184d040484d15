// Where a tensor's storage lives. The CPU is always present; CUDA devices are served by the CUDA
// backend (include/kiln/backend/cuda) when a translation unit compiled by nvcc registers it.
#pragma once

#include <ostream>
#include <string>

namespace kiln {

struct Device {
  enum class Kind { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static constexpr Device cpu() { return {Kind::cpu, 0}; }
  static constexpr Device cuda(int index = 0) { return {Kind::cuda, index}; }

  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  friend bool operator==(const Device&, const Device&) = default;

  std::string name() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  friend std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.name(); }
};

}  // namespace kiln
