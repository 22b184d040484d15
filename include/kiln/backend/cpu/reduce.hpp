// Reductions over a set of dimensions on the CPU.
//
// The input is viewed as [kept dims..., reduced dims...]; each output element folds its reduced
// sub-tensor in a fixed order. When there are few outputs and much to reduce (a full sum), the
// reduced range is cut into fixed blocks folded in parallel and the block results are folded in
// order: the result never depends on the thread count (DESIGN.md: deterministic on CPU).
#pragma once

#include <algorithm>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::cpu {

// Folds `in` over the dims marked in `reduce_mask` into `out` (contiguous, shape = in's shape
// with reduced dims dropped or kept as 1). Reducer provides:
//   Acc init() ; Acc step(Acc, T value, int64 index_in_reduced_range) ; Acc merge(Acc, Acc) ;
//   Out finish(Acc, int64 count)
template <class T, class Out, class Reducer>
void reduce(const Tensor<T>& in, const std::vector<bool>& reduce_mask, const Tensor<Out>& out,
            const Reducer& r) {
  Shape kept_shape, red_shape;
  Strides kept_strides, red_strides;
  for (std::size_t d = 0; d < in.shape().size(); ++d) {
    (reduce_mask[d] ? red_shape : kept_shape).push_back(in.shape()[d]);
    (reduce_mask[d] ? red_strides : kept_strides).push_back(in.strides()[d]);
  }
  merge_dims(kept_shape, kept_strides);
  merge_dims(red_shape, red_strides);
  const std::int64_t n_out = numel_of(kept_shape);
  const std::int64_t n_red = numel_of(red_shape);
  const T* base = in.data();
  Out* po = out.data();

  // Offset of the k-th element (row-major) of a sub-tensor of the given shape/strides.
  auto offset_of = [](std::int64_t k, const Shape& shape, const Strides& strides) {
    std::int64_t off = 0;
    for (std::size_t d = shape.size(); d-- > 0;) {
      off += (k % shape[d]) * strides[d];
      k /= shape[d];
    }
    return off;
  };
  // Folds elements [begin, end) of the reduced range that starts at `start`.
  auto fold = [&](const T* start, std::int64_t begin, std::int64_t end) {
    auto acc = r.init();
    if (red_shape.size() == 1) {
      const std::int64_t s = red_strides[0];
      for (std::int64_t k = begin; k < end; ++k) acc = r.step(acc, start[k * s], k);
    } else {
      for (std::int64_t k = begin; k < end; ++k) acc = r.step(acc, start[offset_of(k, red_shape, red_strides)], k);
    }
    return acc;
  };

  constexpr std::int64_t block = 16384;
  if (n_out >= 64 || n_red <= block) {
    parallel_for(n_out, n_red, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t o = begin; o < end; ++o) {
        const T* start = base + offset_of(o, kept_shape, kept_strides);
        po[o] = r.finish(fold(start, 0, n_red), n_red);
      }
    });
    return;
  }
  // Few outputs, long reductions: fixed blocks in parallel, then an ordered merge.
  const std::int64_t blocks = (n_red + block - 1) / block;
  using Acc = decltype(r.init());
  std::vector<Acc> partial(static_cast<std::size_t>(blocks));
  for (std::int64_t o = 0; o < n_out; ++o) {
    const T* start = base + offset_of(o, kept_shape, kept_strides);
    parallel_chunks(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        partial[static_cast<std::size_t>(b)] = fold(start, b * block, std::min(n_red, (b + 1) * block));
    });
    Acc acc = partial[0];
    for (std::int64_t b = 1; b < blocks; ++b) acc = r.merge(acc, partial[static_cast<std::size_t>(b)]);
    po[o] = r.finish(acc, n_red);
  }
}

}  // namespace kiln::cpu
