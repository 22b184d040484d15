// rms_norm: root-mean-square layer normalisation over the last dim, as in Llama and DeepSeek-V3:
//   y = x / sqrt(mean(x^2, dim=-1) + eps) * weight
// Fused forward and backward (the math is in backend/cpu/rms_norm.hpp; CUDA: kernels/rms_norm/).
#pragma once

#include <cmath>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/rms_norm.hpp"
#include "kiln/kernels/rms_norm/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

// x: [..., D]; weight: [D], or an undefined Tensor for no weight (y = x * r). Differentiable in x
// and weight (once: the backward is a fused kernel, not a graph of ops). For bf16/fp16 inputs the
// result is rounded as Hugging Face's LlamaRMSNorm rounds it: normalised in float32, cast to the
// input dtype, then multiplied by the weight.
template <class T>
Tensor<T> rms_norm(const Tensor<T>& x, const Tensor<T>& weight = Tensor<T>(), double eps = 1e-6) {
  static_assert(is_floating<T>, "rms_norm needs a floating element type");
  check_defined("rms_norm", x);
  check(x.dim() >= 1, "rms_norm", "x must have at least one dim (the normalised one), got shape ", x.shape());
  const std::int64_t D = x.size(-1);
  check(D > 0, "rms_norm", "the normalised (last) dim of x is empty: shape ", x.shape());
  const bool has_weight = weight.defined();
  if (has_weight) {
    check_same_device("rms_norm", x, weight);
    check(weight.dim() == 1 && weight.size(0) == D, "rms_norm", "weight of shape ", weight.shape(),
          " does not match x of shape ", x.shape(), " (expected [", D, "])");
  }
  check(std::isfinite(eps) && eps >= 0.0, "rms_norm", "eps must be finite and >= 0, got ", eps);

  const Tensor<T> xc = contiguous(x.detach());
  const Tensor<T> wc = has_weight ? contiguous(weight.detach()) : Tensor<T>();
  const std::int64_t rows = x.numel() / D;
  Tensor<T> out(x.shape(), x.device());
  Tensor<double> rstd({rows}, x.device());  // 1 / sqrt(mean(x^2) + eps) per row, for the backward
  if (x.device().is_cpu()) {
    cpu::rms_norm_forward(xc.data(), has_weight ? wc.data() : nullptr, out.data(), rstd.data(), rows, D, eps);
  } else {
    check(D <= 0x7fffffff, "rms_norm", "rows of more than 2^31 - 1 elements are not supported on ", x.device(),
          ", got shape ", x.shape());
    launch_device_kernel("rms_norm", kernels::RmsNormForwardArgs{.launch = launch_on("rms_norm", x.device()),
                                                                 .dtype = dtype_of<T>,
                                                                 .y = out.data(),
                                                                 .rstd = rstd.data(),
                                                                 .x = xc.data(),
                                                                 .w = has_weight ? wc.data() : nullptr,
                                                                 .rows = rows,
                                                                 .cols = static_cast<int>(D),
                                                                 .eps = eps});
  }

  if (autograd::needs_grad(x, weight)) {
    autograd::record(out, "rms_norm", [xc, wc, rstd, rows, D](const Tensor<T>& g, const autograd::InputGrads& in) {
      check_same_device("rms_norm backward", xc, g);
      const Tensor<T> gc = contiguous(g);
      Tensor<T> dx = in.needs(0) ? Tensor<T>(xc.shape(), xc.device()) : Tensor<T>();
      Tensor<T> dw = in.needs(1) ? Tensor<T>({D}, xc.device()) : Tensor<T>();
      if (xc.device().is_cpu()) {
        cpu::rms_norm_backward(xc.data(), wc.defined() ? wc.data() : nullptr, gc.data(), rstd.data(),
                               dx.defined() ? dx.data() : nullptr, dw.defined() ? dw.data() : nullptr, rows, D);
      } else {
        launch_device_kernel("rms_norm backward",
                             kernels::RmsNormBackwardArgs{.launch = launch_on("rms_norm backward", xc.device()),
                                                          .dtype = dtype_of<T>,
                                                          .dx = dx.defined() ? dx.data() : nullptr,
                                                          .dw = dw.defined() ? dw.data() : nullptr,
                                                          .x = xc.data(),
                                                          .w = wc.defined() ? wc.data() : nullptr,
                                                          .g = gc.data(),
                                                          .rstd = rstd.data(),
                                                          .rows = rows,
                                                          .cols = static_cast<int>(D)});
      }
      if (dx.defined()) in.add(0, dx);
      if (dw.defined()) in.add(1, dw);
    }, x, weight);
  }
  return out;
}

}  // namespace kiln
