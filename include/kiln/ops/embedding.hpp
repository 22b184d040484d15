// embedding: the rows of a [vocab, dim] weight table picked by integer ids of any shape.
//
// Forward is a row copy. Backward adds each output row's gradient into the row of its id; ids
// repeat (the same token many times in a batch), so the kernel groups the positions by id and
// gives each vocabulary row to one worker, summing its positions in ascending order: no races, and
// the same bits for any thread count (backend/cpu/gather.hpp, index_add_rows) — and on a GPU
// (kernels/gather/index_rows.cuh: a stable radix sort of the ids, then one thread group per
// vocabulary row), the same bits as on the CPU.
//
// Ids are checked on both devices: on the CPU before the copy, on a GPU by the copy kernel itself,
// which flags the first bad position; reading the flag back costs one host-device synchronisation
// per forward call (see ops/gather.hpp, DeviceIndexCheck).
#pragma once

#include <cstdint>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/gather.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/gather.hpp"

namespace kiln {

// weight [V, D], ids (any shape, values in [0, V)) -> [ids..., D]. The row of `padding_idx`
// (when given; negative counts from the end) is looked up as usual but gets no gradient.
// Differentiable in weight.
template <class T>
Tensor<T> embedding(const Tensor<T>& weight, const Tensor<std::int64_t>& ids,
                    std::optional<std::int64_t> padding_idx = std::nullopt) {
  check_defined("embedding", weight, ids);
  check_same_device("embedding", weight, ids);
  check(weight.dim() == 2, "embedding", "weight must be 2-D [vocab, dim], got shape ", weight.shape());
  const std::int64_t vocab = weight.shape()[0], width = weight.shape()[1];
  std::int64_t pad = -1;
  if (padding_idx) {
    check(*padding_idx >= -vocab && *padding_idx < vocab, "embedding", "padding_idx ", *padding_idx,
          " is out of range for a vocabulary of size ", vocab, " (weight of shape ", weight.shape(), ")");
    pad = *padding_idx < 0 ? *padding_idx + vocab : *padding_idx;
  }

  const Tensor<std::int64_t> idx = contiguous(ids.detach());
  const std::int64_t n = idx.numel();
  auto fail_id = [&](std::int64_t id) {
    fail("embedding", "id ", id, " is out of range for a vocabulary of size ", vocab, " (weight of shape ",
         weight.shape(), ")");
  };
  if (weight.device().is_cpu())
    for (std::int64_t i = 0; i < n; ++i)
      if (idx.data()[i] < 0 || idx.data()[i] >= vocab) fail_id(idx.data()[i]);

  Shape shape = ids.shape();
  shape.push_back(width);
  Tensor<T> out(shape, weight.device());
  const Tensor<T> table = contiguous(weight.detach());
  if (const auto bad = detail::index_select_rows(table, out, 1, vocab, width, idx)) fail_id(*bad);

  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(weight)) {
      autograd::record(out, "embedding", [vocab, width, pad, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
        in.add(0, detail::index_add_rows_into_zeros({vocab, width}, contiguous(g), 1, vocab, width, idx, pad));
      }, weight);
    }
  }
  return out;
}

}  // namespace kiln
