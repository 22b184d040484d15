// grouped_linear: G linear layers applied to the G groups of a row-sorted matrix, the expert GEMMs
// of a Mixture-of-Experts layer (nn::MoE's fused dispatch):
//   x [R, K] with group g owning rows offsets[g] .. offsets[g+1] − 1, weight [G, N, K] (G stacked
//   nn.Linear weights [out, in]) -> y [R, N], y[r] = x[r] · weight[g(r)]ᵀ.
// Differentiable in x (dx[r] = dy[r] · weight[g(r)]) and weight (dweight[g] = Σ_{r in g} dy[r]ᵀ
// x[r]; zero for an empty group). On a GPU (kernels/grouped_gemm/, bf16 or fp16, N and K multiples
// of 8) the offsets stay on the device and are never read by the host; on the CPU
// (backend/cpu/grouped_gemm.hpp, any floating type) they are checked.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/grouped_gemm.hpp"
#include "kiln/kernels/grouped_gemm/args.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"

namespace kiln {

namespace detail {

// A contiguous tensor whose data starts 16-byte aligned (the kernel's 16-byte copies).
template <class T>
Tensor<T> contiguous_aligned(const Tensor<T>& t) {
  const Tensor<T> c = contiguous(t);
  return reinterpret_cast<std::uintptr_t>(c.data()) % 16 == 0 ? c : clone(c);
}

template <class T>
void grouped_gemm_launch(const char* op, kernels::GroupedGemmKind kind, Tensor<T>& out, const Tensor<T>& x,
                         const Tensor<T>& dy, const Tensor<T>& weight, const Tensor<std::int64_t>& offsets,
                         std::int64_t rows, std::int64_t groups, std::int64_t n, std::int64_t k,
                         kernels::GroupedGemmKernel implementation = kernels::GroupedGemmKernel::automatic,
                         int hopper_block_n = 0,
                         kernels::GroupedGemmEpilogue epilogue = kernels::GroupedGemmEpilogue::none,
                         void* gate_up = nullptr, std::int64_t wgrad_chunk_rows = 0) {
  launch_device_kernel(op, kernels::GroupedGemmArgs{.launch = launch_on(op, out.device()),
                                                    .dtype = dtype_of<T>,
                                                    .kind = kind,
                                                    .out = out.data(),
                                                    .x = x.defined() ? x.data() : nullptr,
                                                    .dy = dy.defined() ? dy.data() : nullptr,
                                                    .weight = weight.defined() ? weight.data() : nullptr,
                                                    .offsets = offsets.data(),
                                                    .rows = rows,
                                                    .groups = static_cast<int>(groups),
                                                    .n = static_cast<int>(n),
                                                    .k = static_cast<int>(k),
                                                    .implementation = implementation,
                                                    .hopper_block_n = hopper_block_n,
                                                    .epilogue = epilogue,
                                                    .gate_up = gate_up,
                                                    .wgrad_chunk_rows = wgrad_chunk_rows});
}

// The checks of a grouped product x [R, K], weight [G, N, K], offsets [G + 1] (grouped_linear and
// nn::grouped_fp8_linear): shapes, devices, on the CPU the offsets' values, on a GPU the sizes the
// kernels take. Returns the offsets, contiguous.
template <class T>
Tensor<std::int64_t> check_grouped_linear(const char* op, const Tensor<T>& x, const Tensor<T>& weight,
                                          const Tensor<std::int64_t>& offsets) {
  check_defined(op, x, weight, offsets);
  check_same_device(op, x, weight);
  check(offsets.device() == x.device(), op, "offsets are on ", offsets.device(), ", x on ", x.device());
  check(x.dim() == 2 && weight.dim() == 3 && weight.size(2) == x.size(1) && offsets.dim() == 1 &&
            offsets.size(0) == weight.size(0) + 1,
        op, "needs x [R, K], weight [G, N, K] and offsets [G + 1], got shapes ", x.shape(), ", ", weight.shape(),
        " and ", offsets.shape());
  const std::int64_t R = x.size(0), K = x.size(1), G = weight.size(0), N = weight.size(1);
  const Tensor<std::int64_t> oc = contiguous(offsets);
  const bool cpu = x.device().is_cpu();
  if (cpu) {
    const std::vector<std::int64_t> o = oc.to_vector();
    check(o.front() == 0 && o.back() == R, op, "offsets must run from 0 to R = ", R, " (x of shape ", x.shape(),
          "), got offsets[0] = ", o.front(), " and offsets[", G, "] = ", o.back());
    for (std::size_t g = 0; g + 1 < o.size(); ++g)
      check(o[g] <= o[g + 1], op, "offsets must not decrease, got offsets[", g, "] = ", o[g], " > offsets[", g + 1,
            "] = ", o[g + 1]);
  } else {
    check((std::is_same_v<T, bf16> || std::is_same_v<T, fp16>), op, "runs in bf16 or fp16 on ", x.device(),
          ", got ", dtype_of<T>);
    check(N % 8 == 0 && K % 8 == 0 && N < (std::int64_t{1} << 31) && K < (std::int64_t{1} << 31) && G <= 65535, op,
          "on ", x.device(), " needs N and K multiples of 8 and at most 65535 groups, got x ", x.shape(), " and weight ",
          weight.shape());
    check(R / 128 + G < 65535, op, "on ", x.device(), " supports up to about 8.3M rows, got x ", x.shape());
  }
  return oc;
}

// dW [G, N, K]: dW_g = Σ_{r in g} dy[r]ᵀ x[r] (zero for an empty group), in T; x, dy contiguous and aligned.
template <class T>
Tensor<T> grouped_linear_wgrad(const char* op, const Tensor<T>& x, const Tensor<T>& dy, const Tensor<std::int64_t>& offsets,
                               std::int64_t groups, std::int64_t n) {
  const std::int64_t R = x.size(0), K = x.size(1);
  Tensor<T> dw({groups, n, K}, x.device());
  if (x.device().is_cpu())
    cpu::grouped_gemm_wgrad(dy.data(), x.data(), offsets.data(), dw.data(), static_cast<int>(groups), n, K);
  else
    grouped_gemm_launch(op, kernels::GroupedGemmKind::wgrad, dw, x, dy, Tensor<T>(), offsets, R, groups, n, K);
  return dw;
}

// y [R, N]: y[r] = x[r] · W_gᵀ for the group g of row r; x, w contiguous and aligned.
template <class T>
Tensor<T> grouped_linear_forward(const char* op, const Tensor<T>& x, const Tensor<T>& w,
                                 const Tensor<std::int64_t>& offsets) {
  const std::int64_t R = x.size(0), K = x.size(1), G = w.size(0), N = w.size(1);
  Tensor<T> y({R, N}, x.device());
  if (x.device().is_cpu())
    cpu::grouped_gemm_forward(x.data(), w.data(), offsets.data(), y.data(), static_cast<int>(G), N, K);
  else
    grouped_gemm_launch(op, kernels::GroupedGemmKind::forward, y, x, Tensor<T>(), w, offsets, R, G, N, K);
  return y;
}

// dx [R, K]: dx[r] = dy[r] · W_g for the group g of row r; dy, w contiguous and aligned.
template <class T>
Tensor<T> grouped_linear_dgrad(const char* op, const Tensor<T>& dy, const Tensor<T>& w,
                               const Tensor<std::int64_t>& offsets) {
  const std::int64_t R = dy.size(0), G = w.size(0), N = w.size(1), K = w.size(2);
  Tensor<T> dx({R, K}, dy.device());
  if (dy.device().is_cpu())
    cpu::grouped_gemm_dgrad(dy.data(), w.data(), offsets.data(), dx.data(), static_cast<int>(G), N, K);
  else
    grouped_gemm_launch(op, kernels::GroupedGemmKind::dgrad, dx, Tensor<T>(), dy, w, offsets, R, G, N, K);
  return dx;
}

}  // namespace detail

template <class T>
Tensor<T> grouped_linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<std::int64_t>& offsets) {
  static_assert(is_floating<T>, "grouped_linear needs a floating element type");
  const char* op = "grouped_linear";
  const Tensor<std::int64_t> oc = detail::check_grouped_linear(op, x, weight, offsets);
  const std::int64_t G = weight.size(0), N = weight.size(1);
  const Tensor<T> xc = detail::contiguous_aligned(x.detach()), wc = detail::contiguous_aligned(weight.detach());
  Tensor<T> y = detail::grouped_linear_forward(op, xc, wc, oc);

  if (autograd::needs_grad(x, weight)) {
    autograd::record(y, op, [xc, wc, oc, G, N](const Tensor<T>& g, const autograd::InputGrads& in) {
      const char* bop = "grouped_linear backward";
      check_same_device(bop, xc, g);
      const Tensor<T> dy = detail::contiguous_aligned(g);
      if (in.needs(0)) in.add(0, detail::grouped_linear_dgrad(bop, dy, wc, oc));
      if (in.needs(1)) in.add(1, detail::grouped_linear_wgrad(bop, xc, dy, oc, G, N));
    }, x, weight);
  }
  return y;
}

}  // namespace kiln
