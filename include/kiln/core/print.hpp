// Readable printing: std::cout << t gives
//   tensor([[ 1.0000, -2.5000],
//           [ 3.0000,  4.0000]], dtype=float32, device=cpu, requires_grad=true)
// Large tensors show the first and last 3 entries of each dim with "..." between.
#pragma once

#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>

#include "kiln/core/tensor.hpp"

namespace kiln {

namespace detail {

template <class T>
std::string format_element(const T& x) {
  std::ostringstream os;
  if constexpr (is_floating<T>) {
    const double v = static_cast<double>(x);
    const double a = v < 0 ? -v : v;
    if (a != 0.0 && (a >= 1e5 || a < 1e-4) && a == a && a != 1.0 / 0.0)
      os << std::scientific << std::setprecision(4) << v;
    else
      os << std::fixed << std::setprecision(4) << v;
  } else if constexpr (std::is_same_v<T, bool>) {
    os << (x ? "true" : "false");
  } else {
    os << static_cast<long long>(x);
  }
  return os.str();
}

}  // namespace detail

template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  if (!t.defined()) return os << "tensor(undefined)";
  const std::vector<T> values = t.to_vector();
  const Shape& shape = t.shape();
  constexpr std::int64_t edge = 3;
  const bool summarize = t.numel() > 1000;

  std::vector<std::string> cells(values.size());
  std::size_t width = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    cells[i] = detail::format_element(values[i]);
    width = std::max(width, cells[i].size());
  }
  const std::string indent(7, ' ');  // width of "tensor("
  // Prints the sub-tensor at dim d starting at flat element `base` with `stride` elements per index.
  auto print = [&](auto&& self, std::size_t d, std::int64_t base) -> void {
    if (d == shape.size()) {
      os << std::setw(static_cast<int>(width)) << cells[static_cast<std::size_t>(base)];
      return;
    }
    std::int64_t stride = 1;
    for (std::size_t k = d + 1; k < shape.size(); ++k) stride *= shape[k];
    os << '[';
    // Between rows: a comma, one newline per remaining dim, then the indent (built with append:
    // gcc 12 warns falsely (-Wrestrict) on a chain of std::string operator+).
    std::string sep = ",";
    if (d + 1 == shape.size()) {
      sep += ' ';
    } else {
      sep.append(shape.size() - d - 1, '\n');
      sep += indent;
      sep.append(d + 1, ' ');
    }
    for (std::int64_t i = 0; i < shape[d]; ++i) {
      if (i > 0) os << sep;
      if (summarize && shape[d] > 2 * edge && i == edge) {
        os << "...";
        i = shape[d] - edge - 1;
        continue;
      }
      self(self, d + 1, base + i * stride);
    }
    os << ']';
  };
  os << "tensor(";
  print(print, 0, 0);
  os << ", dtype=" << dtype_name<T> << ", device=" << t.device();
  if (t.requires_grad()) os << ", requires_grad=true";
  return os << ')';
}

}  // namespace kiln
