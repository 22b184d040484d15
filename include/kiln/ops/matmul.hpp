// matmul: the matrix product with NumPy / PyTorch semantics.
//   [K] · [K]              -> []            (dot product)
//   [M, K] · [K, N]        -> [M, N]
//   [K] · [..., K, N]      -> [..., N]      (a 1-D left operand becomes a row [1, K], then that dim goes)
//   [..., M, K] · [K]      -> [..., M]      (a 1-D right operand becomes a column [K, 1], then that dim goes)
//   [..., M, K] · [..., K, N] -> [..., M, N] (leading batch dims broadcast: [B,1,M,K]·[H,K,N] -> [B,H,M,N])
// Backward of C = A·B: dA = dC·Bᵀ, dB = Aᵀ·dC, each summed over the batch dims its operand was
// broadcast along. bf16/fp16 operands are multiplied in float and rounded once at the end.
// CPU kernel: backend/cpu/matmul.hpp (Eigen GEMM over kiln's memory, no copies for row-major or
// transposed operands; the layout rule is math/matmul.hpp). CUDA kernel: kernels/matmul/matmul.cuh
// (arguments kernels/matmul/args.hpp; cuBLASLt, the same no-copy rule; float32, float64, bfloat16
// and float16; float32 in TF32 only after kiln::cuda::set_allow_tf32(true), see
// kernels/matmul/cublaslt.hpp). The backward is made of kiln ops, so it runs on the device too.
#pragma once

#include <algorithm>

#include "kiln/autograd/node.hpp"
#include "kiln/backend/cpu/matmul.hpp"
#include "kiln/kernels/matmul/args.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/common.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/view.hpp"

namespace kiln {

namespace detail {

// The sizes of a product after promoting 1-D operands to matrices.
struct MatmulShapes {
  Shape batch;    // broadcast batch dims
  std::int64_t m, k, n;
  Shape out;      // batch + [m] (unless a is 1-D) + [n] (unless b is 1-D)
};

inline MatmulShapes matmul_shapes(const Shape& a, const Shape& b) {
  check(!a.empty() && !b.empty(), "matmul", "shapes ", a, " and ", b,
        ": both operands need at least one dimension");
  MatmulShapes s;
  s.m = a.size() >= 2 ? a[a.size() - 2] : 1;
  s.k = a.back();
  const std::int64_t kb = b.size() >= 2 ? b[b.size() - 2] : b[0];
  s.n = b.size() >= 2 ? b.back() : 1;
  check(s.k == kb, "matmul", "shapes ", a, " and ", b, ": inner dimensions ", s.k, " and ", kb, " differ");

  const Shape ba(a.begin(), a.end() - std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(a.size()), 2));
  const Shape bb(b.begin(), b.end() - std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(b.size()), 2));
  const std::size_t nb = std::max(ba.size(), bb.size());
  s.batch.resize(nb);
  for (std::size_t i = 0; i < nb; ++i) {
    const std::int64_t da = i < nb - ba.size() ? 1 : ba[i - (nb - ba.size())];
    const std::int64_t db = i < nb - bb.size() ? 1 : bb[i - (nb - bb.size())];
    check(da == db || da == 1 || db == 1, "matmul", "shapes ", a, " and ", b, ": batch dimensions ", ba, " and ", bb,
          " cannot be broadcast (", da, " vs ", db, ")");
    s.batch[i] = da == 1 ? db : da;
  }
  s.out = s.batch;
  if (a.size() >= 2) s.out.push_back(s.m);
  if (b.size() >= 2) s.out.push_back(s.n);
  return s;
}

// t as a view with shape `shape` (same elements, row-major), without recording a graph.
template <class T>
Tensor<T> matmul_promote(const Tensor<T>& t, bool as_row) {
  if (t.dim() >= 2) return t;
  const std::int64_t k = t.shape()[0], st = t.strides()[0];
  return as_row ? restride(t, t.offset(), {1, k}, {k * st, st}) : restride(t, t.offset(), {k, 1}, {st, 1});
}

// A copy Eigen can read when t's matrices are neither row-major nor transposed (strided slices,
// stride-0 expanded rows); t itself otherwise.
template <class T>
Tensor<T> gemm_readable(const Tensor<T>& t) {
  if (t.numel() == 0 || cpu::gemm_layout(t).layout != cpu::GemmLayout::unsupported) return t;
  return copy_as<T>("matmul", t);
}

// The GEMM into `out` (the product's full batch shape, row-major matrices; kernels/matmul/
// matmul.cuh), out = addend + a·b when an addend (out's shape and strides) is given: a and b are
// passed broadcast to the full batch shape, with matrices the GEMM reads in place (row-major or
// transposed; others copied first).
template <class T>
void launch_gemm(const Tensor<T>& out, const Tensor<T>& a, const Tensor<T>& b, const MatmulShapes& s,
                 const Tensor<T>& addend = Tensor<T>()) {
  Shape a_shape = s.batch, b_shape = s.batch;
  a_shape.insert(a_shape.end(), {s.m, s.k});
  b_shape.insert(b_shape.end(), {s.k, s.n});
  const Tensor<T> a2 = gemm_readable(matmul_promote(a, true)), b2 = gemm_readable(matmul_promote(b, false));
  launch_device_kernel("matmul", kernels::MatmulArgs{.launch = launch_on("matmul", out.device()),
                                                     .out = kernel_view(out),
                                                     .a = kernel_broadcast_view(a2, a_shape),
                                                     .b = kernel_broadcast_view(b2, b_shape),
                                                     .addend = addend.defined() ? kernel_view(addend)
                                                                                : kernels::TensorView{}});
}

// The product on a GPU: a fresh contiguous output.
template <class T>
Tensor<T> matmul_device(const Tensor<T>& a, const Tensor<T>& b, const MatmulShapes& s) {
  constexpr bool supported = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16> ||
                             std::is_same_v<T, fp16>;
  if constexpr (!supported) {
    fail("matmul", "has no ", a.device(), " kernel for dtype ", dtype_of<T>, " (shapes ", a.shape(), " and ",
         b.shape(), "); float32, float64, bfloat16 and float16 are supported");
  } else {
    Shape full = s.batch;
    full.push_back(s.m);
    full.push_back(s.n);
    Tensor<T> out(full, a.device());
    const Tensor<T> result = restride(out, out.offset(), s.out, contiguous_strides(s.out));
    if (out.numel() > 0) launch_gemm(out, a, b, s);
    return result;
  }
}

// The product without recording a graph.
template <class T>
Tensor<T> matmul_kernel(const Tensor<T>& a, const Tensor<T>& b, const MatmulShapes& s) {
  if (!a.device().is_cpu()) return matmul_device(a, b, s);
  if constexpr (is_low_precision<T>) {
    return copy_as<T>("matmul", matmul_kernel(copy_as<float>("matmul", a), copy_as<float>("matmul", b), s));
  } else {
    Shape full = s.batch;
    full.push_back(s.m);
    full.push_back(s.n);
    Tensor<T> out(full, a.device());
    const Tensor<T> result = restride(out, out.offset(), s.out, contiguous_strides(s.out));
    if (out.numel() == 0) return result;

    const Tensor<T> a2 = gemm_readable(matmul_promote(a, true));
    const Tensor<T> b2 = gemm_readable(matmul_promote(b, false));
    const std::int64_t rows = numel_of(s.batch) * s.m;

    // B shared by the whole batch (a linear layer on [batch, tokens, features]): when A's batch
    // and row dims merge into one, the batch is a single tall GEMM, which Eigen parallelises well.
    if (numel_of(s.batch) > 1 && numel_of(Shape(b2.shape().begin(), b2.shape().end() - 2)) == 1) {
      if (auto st = view_strides(a2.shape(), a2.strides(), {rows, s.k})) {
        const Tensor<T> a_flat = restride(a2, a2.offset(), {rows, s.k}, *st);
        if (cpu::gemm_layout(a_flat).layout != cpu::GemmLayout::unsupported) {
          const std::size_t nb = b2.shape().size();
          const Tensor<T> b_flat = restride(b2, b2.offset(), {s.k, s.n}, {b2.strides()[nb - 2], b2.strides()[nb - 1]});
          cpu::matmul(a_flat, b_flat, restride(out, out.offset(), {rows, s.n}, {s.n, 1}));
          return result;
        }
      }
    }

    Shape a_shape = s.batch, b_shape = s.batch;
    a_shape.insert(a_shape.end(), {s.m, s.k});
    b_shape.insert(b_shape.end(), {s.k, s.n});
    cpu::matmul(restride(a2, a2.offset(), a_shape, broadcast_strides(a2.shape(), a2.strides(), a_shape)),
                restride(b2, b2.offset(), b_shape, broadcast_strides(b2.shape(), b2.strides(), b_shape)), out);
    return result;
  }
}

}  // namespace detail

template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b);  // below
template <class T>
Tensor<T> matmul_add(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& c);  // below

namespace detail {

// The gradients of a·b (inputs 0 and 1 of the node) from the output's gradient g: matmul's
// backward, and matmul_add's for a and b.
template <class T>
void matmul_backward(const Tensor<T>& a, const Tensor<T>& b, const MatmulShapes& s, const Tensor<T>& g,
                     const autograd::InputGrads& in) {
  // Work on the promoted operands a2 [..., m, k], b2 [..., k, n] and gradient g2 [batch, m, n].
  const Tensor<T> a2 = a.dim() == 1 ? unsqueeze(a, 0) : a;
  const Tensor<T> b2 = b.dim() == 1 ? unsqueeze(b, 1) : b;
  Shape g_shape = s.batch;
  g_shape.insert(g_shape.end(), {s.m, s.n});
  const Tensor<T> g2 = reshape(g, g_shape);
  if (in.needs(0)) {
    // A gradient a received before (e.g. the other branches' at a residual or a shared input)
    // is added in the product's epilogue when no batch dims are summed (matmul_add: on a GPU one
    // GEMM with beta = 1, where a separate add would read both and write the sum).
    const Tensor<T> received = in.received<T>(0);
    const Tensor<T> bt = transpose(b2, -1, -2);
    if (received.defined() && a.dim() >= 2 && detail::matmul_shapes(g2.shape(), bt.shape()).out == a2.shape()) {
      in.set_total(0, reshape(matmul_add(g2, bt, reshape(received, a2.shape())), a.shape()));
    } else {
      const Tensor<T> da = sum_to(matmul(g2, bt), a2.shape());
      in.add(0, reshape(da, a.shape()));
    }
  }
  if (in.needs(1)) {
    Tensor<T> db;
    if (b.dim() == 2 && cpu::gemm_layout(b).layout == cpu::GemmLayout::col_major) {
      // b is the transposed view of a row-major [n, k] matrix (Linear's weight, read as Wᵀ; one
      // row or column counts as row-major, math/matmul.hpp): its gradient is made in that
      // matrix's layout, dBᵀ = dCᵀ·A [n, k], and passed on as the same transposed view, so the
      // transpose's backward hands W a row-major gradient. The other way, Aᵀ·dC [k, n] reached W
      // as a transposed view that was then copied element by element (a strided copy at a tenth
      // of the copy bandwidth, every weight every step).
      db = transpose(matmul(transpose(reshape(g2, {-1, s.n}), 0, 1), reshape(a2, {-1, s.k})), 0, 1);
    } else if (numel_of(s.batch) > 1 && numel_of(Shape(b2.shape().begin(), b2.shape().end() - 2)) == 1) {
      // One B for the whole batch: sum_i A_iᵀ·dC_i is a single product over the batch folded
      // into the rows, [k, batch·m] · [batch·m, n], with no [batch, k, n] temporary.
      db = matmul(transpose(reshape(a2, {-1, s.k}), 0, 1), reshape(g2, {-1, s.n}));
    } else {
      db = sum_to(matmul(transpose(a2, -1, -2), g2), b2.shape());
    }
    in.add(1, reshape(db, b.shape()));
  }
}

}  // namespace detail

// The matrix product of a and b (see the top of this file for the shapes).
template <class T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b) {
  static_assert(is_floating<T>, "kiln::matmul takes floating-point tensors");
  check_defined("matmul", a, b);
  check_same_device("matmul", a, b);
  const detail::MatmulShapes s = detail::matmul_shapes(a.shape(), b.shape());
  Tensor<T> out = detail::matmul_kernel(a, b, s);
  if (!autograd::needs_grad(a, b)) return out;

  autograd::record(out, "matmul", [a = a.detach(), b = b.detach(), s](const Tensor<T>& g,
                                                                      const autograd::InputGrads& in) {
    detail::matmul_backward(a, b, s, g, in);
  }, a, b);
  return out;
}

// c + a·b for a and b of two or more dims and c of the product's shape (no broadcast): a residual
// connection after a linear layer. On a GPU one GEMM that adds c in its epilogue (cuBLASLt's
// beta = 1; rounded once, where add(c, matmul(a, b)) rounds twice); on the CPU add(c, matmul(a,
// b)). Differentiable in a, b and c (c's gradient is the output's).
template <class T>
Tensor<T> matmul_add(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& c) {
  static_assert(is_floating<T>, "kiln::matmul_add takes floating-point tensors");
  check_defined("matmul_add", a, b, c);
  check_same_device("matmul_add", a, b, c);
  check(a.dim() >= 2 && b.dim() >= 2, "matmul_add", "needs operands of two or more dims, got shapes ", a.shape(),
        " and ", b.shape());
  const detail::MatmulShapes s = detail::matmul_shapes(a.shape(), b.shape());
  check(c.shape() == s.out, "matmul_add", "addend of shape ", c.shape(), " is not the shape of the product of ",
        a.shape(), " and ", b.shape(), " (", s.out, ")");
  if (a.device().is_cpu() || s.k == 0 || c.numel() == 0) return add(c, matmul(a, b));
  Tensor<T> out(s.out, a.device());
  detail::launch_gemm(out, a.detach(), b.detach(), s, contiguous(c.detach()));
  if (autograd::needs_grad(a, b, c)) {
    autograd::record(out, "matmul_add", [a = a.detach(), b = b.detach(), s](const Tensor<T>& g,
                                                                          const autograd::InputGrads& in) {
      in.add(2, g);  // first: a's backward may then fold it in where a and c meet (a residual block)
      detail::matmul_backward(a, b, s, g, in);
    }, a, b, c);
  }
  return out;
}

// out = a·b for a and b of two or more dims (batch dims broadcast as in matmul), written into
// `out`: a view of the product's shape with distinct elements, e.g. per-head products stored
// straight into their slices of a [tokens, heads, dims] tensor. On a GPU the GEMM writes there
// directly when out's matrices are row-major (unit column stride, any row stride: no copy after
// it); otherwise the product is made and copied in. No graph (decode paths).
template <class T>
void matmul_into(const Tensor<T>& out, const Tensor<T>& a, const Tensor<T>& b) {
  static_assert(is_floating<T>, "kiln::matmul_into takes floating-point tensors");
  check_defined("matmul_into", out, a, b);
  check_same_device("matmul_into", out, a, b);
  check(a.dim() >= 2 && b.dim() >= 2, "matmul_into", "needs operands of two or more dims, got shapes ", a.shape(),
        " and ", b.shape());
  const detail::MatmulShapes s = detail::matmul_shapes(a.shape(), b.shape());
  check(out.shape() == s.out, "matmul_into", "out of shape ", out.shape(), " does not hold the product of ",
        a.shape(), " and ", b.shape(), " (", s.out, ")");
  const bool row_major = (s.n == 1 || out.stride(-1) == 1) && (s.m == 1 || out.stride(-2) >= s.n);
  if (!out.device().is_cpu() && row_major && s.k > 0 && out.numel() > 0) {
    detail::launch_gemm(out, a.detach(), b.detach(), s);
    return;
  }
  copy_into(out, detail::matmul_kernel(a.detach(), b.detach(), s));
}

}  // namespace kiln
