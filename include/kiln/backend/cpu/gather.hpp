// CPU kernels for indexing along one dimension: gather / scatter_add (an index per element) and
// index_select / index_add (one index list shared by every row), used by gather.hpp,
// embedding.hpp and topk.hpp.
//
// Scatter-adds are deterministic without atomics: work is split so that no two threads ever add
// into the same destination element, and each element receives its contributions in ascending
// source order, so the result is bit-identical for any thread count.
//   - scatter_add walks "lines" along `dim`; two index positions can only hit the same
//     destination element when they differ in `dim` alone, i.e. lie on the same line, and one
//     thread owns each whole line.
//   - index_add groups the source rows by destination row (a stable counting sort of the
//     indices) and gives each destination row to one thread.
// Index values must already be validated (0 <= index < size); the kernels do not check them.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/math/index_add.hpp"

namespace kiln::cpu {

// The lines of `shape` along `dim`: one line per coordinate of the other dims. For operand k,
// offsets(line)[k] is its element offset at the line's start, from its strides over every dim but
// `dim` (each operand's own `dim` stride is left to the caller, as operands may differ in `dim`).
template <std::size_t N>
class Lines {
 public:
  Lines(const Shape& shape, int dim, const std::array<Strides, N>& strides) {
    for (std::size_t d = 0; d < shape.size(); ++d) {
      if (static_cast<int>(d) == dim) continue;
      outer_shape_.push_back(shape[d]);
      for (std::size_t k = 0; k < N; ++k) outer_strides_[k].push_back(strides[k][d]);
    }
    length_ = shape.empty() ? 1 : shape[static_cast<std::size_t>(dim)];
    count_ = numel_of(outer_shape_);
  }

  std::int64_t count() const { return count_; }
  std::int64_t length() const { return length_; }

  std::array<std::int64_t, N> offsets(std::int64_t line) const {
    std::array<std::int64_t, N> off{};
    for (std::size_t d = outer_shape_.size(); d-- > 0;) {
      const std::int64_t i = line % outer_shape_[d];
      line /= outer_shape_[d];
      for (std::size_t k = 0; k < N; ++k) off[k] += i * outer_strides_[k][d];
    }
    return off;
  }

 private:
  Shape outer_shape_;
  std::array<Strides, N> outer_strides_;
  std::int64_t length_ = 1;
  std::int64_t count_ = 0;
};

// out[p] = src[p with p[dim] replaced by index[p]], for every position p of index's shape. `out`
// has index's shape; src may be larger than index in the dims other than `dim`.
template <class T>
void gather(const Tensor<T>& out, const Tensor<T>& src, int dim, const Tensor<std::int64_t>& index) {
  const auto d = static_cast<std::size_t>(dim);
  const Lines<3> lines(index.shape(), dim, {out.strides(), index.strides(), src.strides()});
  const std::int64_t so = out.strides()[d], si = index.strides()[d], ss = src.strides()[d];
  T* po = out.data();
  const std::int64_t* pi = index.data();
  const T* ps = src.data();
  parallel_for(lines.count(), lines.length(), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t line = begin; line < end; ++line) {
      const auto off = lines.offsets(line);
      for (std::int64_t j = 0; j < lines.length(); ++j)
        po[off[0] + j * so] = ps[off[2] + pi[off[1] + j * si] * ss];
    }
  });
}

// dst[p with p[dim] replaced by index[p]] += src[p], for every position p of index's shape (src
// has index's shape). dst must not alias itself (no stride-0 dims): each line along `dim` is one
// thread's, so repeated indices add up in ascending order along the line.
template <class T>
void scatter_add(const Tensor<T>& dst, int dim, const Tensor<std::int64_t>& index, const Tensor<T>& src) {
  using C = compute_t<T>;
  const auto d = static_cast<std::size_t>(dim);
  const Lines<3> lines(index.shape(), dim, {dst.strides(), index.strides(), src.strides()});
  const std::int64_t sd = dst.strides()[d], si = index.strides()[d], ss = src.strides()[d];
  T* pd = dst.data();
  const std::int64_t* pi = index.data();
  const T* ps = src.data();
  parallel_for(lines.count(), lines.length(), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t line = begin; line < end; ++line) {
      const auto off = lines.offsets(line);
      for (std::int64_t j = 0; j < lines.length(); ++j) {
        T& target = pd[off[0] + pi[off[1] + j * si] * sd];
        target = convert<T>(static_cast<C>(target) + static_cast<C>(ps[off[2] + j * ss]));
      }
    }
  });
}

// Contiguous src [outer, size, inner] -> contiguous out [outer, n, inner]:
// out[o][j][:] = src[o][index[j]][:].
template <class T>
void index_select_rows(const T* src, T* out, std::int64_t outer, std::int64_t size, std::int64_t inner,
                       const std::int64_t* index, std::int64_t n) {
  parallel_for(outer * n, inner, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t o = row / n, j = row % n;
      const T* from = src + (o * size + index[j]) * inner;
      std::copy(from, from + inner, out + row * inner);
    }
  });
}

// Contiguous dst [outer, size, inner] += contiguous src [outer, n, inner] scattered by index:
// dst[o][index[j]][:] += src[o][j][:]. Destination row `skip_row` (when >= 0) receives nothing
// (embedding's padding row). Each destination row sums its sources in ascending j, in compute_t
// precision, in chunks of math::kIndexAddChunk (math/index_add.hpp: the order the CUDA kernels
// follow too), on one thread.
template <class T>
void index_add_rows(T* dst, const T* src, std::int64_t outer, std::int64_t size, std::int64_t inner,
                    const std::int64_t* index, std::int64_t n, std::int64_t skip_row = -1) {
  using C = compute_t<T>;
  // Stable counting sort of j by index[j]: bucket r is order[start[r] .. start[r + 1]).
  std::vector<std::int64_t> start(static_cast<std::size_t>(size + 1), 0);
  for (std::int64_t j = 0; j < n; ++j) ++start[static_cast<std::size_t>(index[j] + 1)];
  for (std::int64_t r = 0; r < size; ++r) start[static_cast<std::size_t>(r + 1)] += start[static_cast<std::size_t>(r)];
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  {
    std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
    for (std::int64_t j = 0; j < n; ++j) order[static_cast<std::size_t>(fill[static_cast<std::size_t>(index[j])]++)] = j;
  }

  const std::int64_t cost = inner * std::max<std::int64_t>(1, size > 0 ? n / size : 1);
  parallel_for(outer * size, cost, [&](std::int64_t begin, std::int64_t end) {
    std::vector<C> acc(static_cast<std::size_t>(inner)), chunk(static_cast<std::size_t>(inner));
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t o = row / size, r = row % size;
      const std::int64_t first = start[static_cast<std::size_t>(r)], last = start[static_cast<std::size_t>(r + 1)];
      if (first == last || r == skip_row) continue;
      T* to = dst + row * inner;
      for (std::int64_t k = 0; k < inner; ++k) acc[static_cast<std::size_t>(k)] = static_cast<C>(to[k]);
      for (std::int64_t c0 = first; c0 < last; c0 += math::kIndexAddChunk) {
        std::fill(chunk.begin(), chunk.end(), C(0));
        for (std::int64_t b = c0; b < std::min(last, c0 + math::kIndexAddChunk); ++b) {
          const T* from = src + (o * n + order[static_cast<std::size_t>(b)]) * inner;
          for (std::int64_t k = 0; k < inner; ++k) chunk[static_cast<std::size_t>(k)] += static_cast<C>(from[k]);
        }
        for (std::int64_t k = 0; k < inner; ++k) acc[static_cast<std::size_t>(k)] += chunk[static_cast<std::size_t>(k)];
      }
      for (std::int64_t k = 0; k < inner; ++k) to[k] = convert<T>(acc[static_cast<std::size_t>(k)]);
    }
  });
}

}  // namespace kiln::cpu
