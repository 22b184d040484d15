// CPU kernel for topk: the k largest (or smallest) entries of every line along one dim.
//
// Each line is copied into a buffer of (value, position) pairs and std::partial_sort (sorted
// output) or std::nth_element (unsorted) selects the first k under a strict total order: value
// first, then position, so ties keep the lower position first and the selection is the same on
// every run. NaN ranks above every number (as in PyTorch): first when largest, last otherwise.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "kiln/backend/cpu/gather.hpp"
#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::cpu {

// values / indices: shape of src with `dim` resized to k. With sorted = false the k entries come
// in ascending position order.
template <class T>
void topk(const Tensor<T>& src, int dim, std::int64_t k, bool largest, bool sorted, const Tensor<T>& values,
          const Tensor<std::int64_t>& indices) {
  using C = compute_t<T>;
  using Entry = std::pair<C, std::int64_t>;
  const auto d = static_cast<std::size_t>(dim);
  const Lines<3> lines(src.shape(), dim, {src.strides(), values.strides(), indices.strides()});
  const std::int64_t n = lines.length();
  const std::int64_t ss = src.strides()[d], sv = values.strides()[d], si = indices.strides()[d];
  const T* ps = src.data();
  T* pv = values.data();
  std::int64_t* pi = indices.data();

  auto before = [largest](const Entry& a, const Entry& b) {
    const bool a_nan = a.first != a.first, b_nan = b.first != b.first;
    if (a_nan != b_nan) return largest ? a_nan : b_nan;
    if (!a_nan && a.first != b.first) return largest ? a.first > b.first : a.first < b.first;
    return a.second < b.second;
  };

  parallel_for(lines.count(), n, [&](std::int64_t begin, std::int64_t end) {
    std::vector<Entry> buf(static_cast<std::size_t>(n));
    for (std::int64_t line = begin; line < end; ++line) {
      const auto off = lines.offsets(line);
      for (std::int64_t j = 0; j < n; ++j) buf[static_cast<std::size_t>(j)] = {static_cast<C>(ps[off[0] + j * ss]), j};
      const auto kth = buf.begin() + k;
      if (sorted) {
        std::partial_sort(buf.begin(), kth, buf.end(), before);
      } else {
        std::nth_element(buf.begin(), kth, buf.end(), before);
        std::sort(buf.begin(), kth, [](const Entry& a, const Entry& b) { return a.second < b.second; });
      }
      for (std::int64_t j = 0; j < k; ++j) {
        const Entry& e = buf[static_cast<std::size_t>(j)];
        pv[off[1] + j * sv] = ps[off[0] + e.second * ss];
        pi[off[2] + j * si] = e.second;
      }
    }
  });
}

}  // namespace kiln::cpu
