// rms_norm: root-mean-square layer normalisation over the last dim, as in Llama and DeepSeek-V3:
//   y = x / sqrt(mean(x^2, dim=-1) + eps) * weight
// Fused forward and backward (the math is in backend/cpu/rms_norm.hpp; CUDA: kernels/rms_norm/).
#pragma once

#include <cmath>
#include <optional>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/rms_norm.hpp"
#include "kiln/kernels/rms_norm/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/gradient_places.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

namespace detail {

// The stride between consecutive rows of t [..., D] (D contiguous) when all its rows lie a fixed
// number of elements apart; nullopt otherwise.
template <class T>
std::optional<std::int64_t> rms_norm_row_stride(const Tensor<T>& t) {
  const std::int64_t D = t.size(-1);
  if (t.numel() == 0) return D;
  const auto st = view_strides(t.shape(), t.strides(), {t.numel() / D, D});
  if (!st || ((*st)[1] != 1 && D > 1)) return std::nullopt;
  return (*st)[0];
}

// out = rms_norm(x, weight, eps) on a GPU for x and out whose rows lie a fixed stride apart
// (rms_norm_row_stride), weight [D] or undefined; no r saved, no graph.
template <class T>
void rms_norm_strided(const Tensor<T>& out, const Tensor<T>& x, const Tensor<T>& weight, double eps) {
  const std::int64_t D = x.size(-1), rows = x.numel() / D;
  check(D <= 0x7fffffff, "rms_norm", "rows of more than 2^31 - 1 elements are not supported on ", x.device(),
        ", got shape ", x.shape());
  const Tensor<T> wc = weight.defined() ? contiguous(weight.detach()) : Tensor<T>();
  launch_device_kernel("rms_norm", kernels::RmsNormForwardArgs{.launch = launch_on("rms_norm", x.device()),
                                                               .dtype = dtype_of<T>,
                                                               .y = out.data(),
                                                               .rstd = nullptr,
                                                               .x = x.data(),
                                                               .w = wc.defined() ? wc.data() : nullptr,
                                                               .rows = rows,
                                                               .cols = static_cast<int>(D),
                                                               .eps = eps,
                                                               .x_row_stride = *rms_norm_row_stride(x),
                                                               .y_row_stride = *rms_norm_row_stride(out)});
}

// The argument checks every rms_norm entry point shares.
template <class T>
void check_rms_norm(const Tensor<T>& x, const Tensor<T>& weight, double eps) {
  check_defined("rms_norm", x);
  check(x.dim() >= 1, "rms_norm", "x must have at least one dim (the normalised one), got shape ", x.shape());
  const std::int64_t D = x.size(-1);
  check(D > 0, "rms_norm", "the normalised (last) dim of x is empty: shape ", x.shape());
  if (weight.defined()) {
    check_same_device("rms_norm", x, weight);
    check(weight.dim() == 1 && weight.size(0) == D, "rms_norm", "weight of shape ", weight.shape(),
          " does not match x of shape ", x.shape(), " (expected [", D, "])");
  }
  check(std::isfinite(eps) && eps >= 0.0, "rms_norm", "eps must be finite and >= 0, got ", eps);
}

}  // namespace detail

// rms_norm(x, weight, eps) written into `out` (x's shape, distinct elements; e.g. the part of a
// tensor being assembled), no graph. On a GPU rows a fixed stride apart in x and out are read and
// written in place; otherwise through a contiguous result copied in.
template <class T>
void rms_norm_into(const Tensor<T>& out, const Tensor<T>& x, const Tensor<T>& weight = Tensor<T>(),
                   double eps = 1e-6);

// x: [..., D]; weight: [D], or an undefined Tensor for no weight (y = x * r). Differentiable in x
// and weight (once: the backward is a fused kernel, not a graph of ops). For bf16/fp16 inputs the
// result is rounded as Hugging Face's LlamaRMSNorm rounds it: normalised in float32, cast to the
// input dtype, then multiplied by the weight.
template <class T>
Tensor<T> rms_norm(const Tensor<T>& x, const Tensor<T>& weight = Tensor<T>(), double eps = 1e-6) {
  static_assert(is_floating<T>, "rms_norm needs a floating element type");
  detail::check_rms_norm(x, weight, eps);
  const std::int64_t D = x.size(-1);
  const bool has_weight = weight.defined();

  const std::int64_t rows = x.numel() / D;
  const bool grad = autograd::needs_grad(x, weight);
  // Without a backward a GPU reads rows a fixed stride apart in place (slices of wider rows).
  if (!grad && !x.device().is_cpu() && detail::rms_norm_row_stride(x)) {
    Tensor<T> out(x.shape(), x.device());
    detail::rms_norm_strided(out, x, weight, eps);
    return out;
  }
  // With a backward too, a GPU reads x in place when its rows lie a fixed stride apart (a slice of
  // wider rows: MLA's q_a and latent, parts of one projection's output) and x's storage is at most
  // 8 times x (the backward keeps x, and with it that storage); otherwise a contiguous copy.
  const bool in_place = !x.device().is_cpu() && detail::rms_norm_row_stride(x) &&
                        x.storage()->nbytes() / sizeof(T) <= 8 * static_cast<std::size_t>(rows * D);
  const Tensor<T> xc = in_place ? x.detach() : contiguous(x.detach());
  const std::int64_t x_stride = *detail::rms_norm_row_stride(xc);
  const Tensor<T> wc = has_weight ? contiguous(weight.detach()) : Tensor<T>();
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
                                                                 .eps = eps,
                                                                 .x_row_stride = x_stride});
  }

  if (autograd::needs_grad(x, weight)) {
    autograd::record(out, "rms_norm", [xc, wc, rstd, rows, D, x_stride](const Tensor<T>& g,
                                                                         const autograd::InputGrads& in) {
      check_same_device("rms_norm backward", xc, g);
      const Tensor<T> gc = contiguous(g);
      // A gradient x already received (a residual stream's, from the add after this branch) is
      // added while dx is written: one read instead of a separate add's three passes.
      const Tensor<T> received = in.received<T>(0);
      const T* dx_add = received.defined() ? received.data() : nullptr;
      // dx where x lay when x is a slice of wider rows read in place (ops/gradient_places.hpp), so
      // that the split x came from takes it without a copy; contiguous otherwise, and when a
      // gradient received before is folded in (the kernel reads that one contiguous).
      Tensor<T> dx = !in.needs(0)                          ? Tensor<T>()
                     : !received.defined() && x_stride != D ? detail::gradients_where_inputs_lay<T>({xc}).front()
                                                            : Tensor<T>(xc.shape(), xc.device());
      const std::int64_t dx_stride = dx.defined() ? *detail::rms_norm_row_stride(dx) : D;
      Tensor<T> dw = in.needs(1) ? Tensor<T>({D}, xc.device()) : Tensor<T>();
      if (xc.device().is_cpu()) {
        cpu::rms_norm_backward(xc.data(), wc.defined() ? wc.data() : nullptr, gc.data(), rstd.data(),
                               dx.defined() ? dx.data() : nullptr, dw.defined() ? dw.data() : nullptr, rows, D,
                               dx_add);
      } else {
        launch_device_kernel("rms_norm backward",
                             kernels::RmsNormBackwardArgs{.launch = launch_on("rms_norm backward", xc.device()),
                                                          .dtype = dtype_of<T>,
                                                          .dx = dx.defined() ? dx.data() : nullptr,
                                                          .dx_add = dx_add,
                                                          .dw = dw.defined() ? dw.data() : nullptr,
                                                          .x = xc.data(),
                                                          .w = wc.defined() ? wc.data() : nullptr,
                                                          .g = gc.data(),
                                                          .rstd = rstd.data(),
                                                          .rows = rows,
                                                          .cols = static_cast<int>(D),
                                                          .x_row_stride = x_stride,
                                                          .dx_row_stride = dx_stride});
      }
      if (dx.defined()) received.defined() ? in.set_total(0, dx) : in.add(0, dx);
      if (dw.defined()) in.add(1, dw);
    }, x, weight);
  }
  return out;
}

template <class T>
void rms_norm_into(const Tensor<T>& out, const Tensor<T>& x, const Tensor<T>& weight, double eps) {
  static_assert(is_floating<T>, "rms_norm needs a floating element type");
  detail::check_rms_norm(x, weight, eps);
  check_defined("rms_norm", out);
  check_same_device("rms_norm", out, x);
  check(out.shape() == x.shape(), "rms_norm", "out of shape ", out.shape(), " does not match x of shape ", x.shape());
  if (out.numel() == 0) return;
  if (!x.device().is_cpu() && detail::rms_norm_row_stride(x) && detail::rms_norm_row_stride(out)) {
    detail::rms_norm_strided(out, x, weight, eps);
    return;
  }
  NoGradGuard no_grad;
  copy_into(out, rms_norm(x.detach(), weight.defined() ? weight.detach() : weight, eps));
}

}  // namespace kiln
