// embedding: the rows of a [vocab, dim] weight table picked by integer ids of any shape.
//
// Forward is a row copy. Backward adds each output row's gradient into the row of its id; ids
// repeat (the same token many times in a batch), so the kernel groups the positions by id and
// gives each vocabulary row to one thread, summing its positions in order: no races, and the
// same bits for any thread count (backend/cpu/gather.hpp, index_add_rows).
#pragma once

#include <cstdint>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/gather.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln {

// weight [V, D], ids (any shape, values in [0, V)) -> [ids..., D]. The row of `padding_idx`
// (when given; negative counts from the end) is looked up as usual but gets no gradient.
// Differentiable in weight.
template <class T>
Tensor<T> embedding(const Tensor<T>& weight, const Tensor<std::int64_t>& ids,
                    std::optional<std::int64_t> padding_idx = std::nullopt) {
  check_defined("embedding", weight, ids);
  check_same_device("embedding", weight, ids);
  check_cpu("embedding", weight);
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
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t id = idx.data()[i];
    check(id >= 0 && id < vocab, "embedding", "id ", id, " is out of range for a vocabulary of size ", vocab,
          " (weight of shape ", weight.shape(), ")");
  }

  Shape shape = ids.shape();
  shape.push_back(width);
  Tensor<T> out(shape, weight.device());
  const Tensor<T> table = contiguous(weight.detach());
  cpu::index_select_rows(table.data(), out.data(), 1, vocab, width, idx.data(), n);

  if constexpr (is_floating<T>) {
    if (autograd::needs_grad(weight)) {
      autograd::record(out, "embedding", [vocab, width, pad, idx](const Tensor<T>& g, const autograd::InputGrads& in) {
        Tensor<T> grad = zeros<T>({vocab, width}, g.device());
        const Tensor<T> gc = contiguous(g);
        cpu::index_add_rows(grad.data(), gc.data(), 1, vocab, width, idx.data(), idx.numel(), pad);
        in.add(0, grad);
      }, weight);
    }
  }
  return out;
}

}  // namespace kiln
