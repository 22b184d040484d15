// Matrix products on the CPU through Eigen's GEMM.
//
// Each operand's last two dims are handed to Eigen as a Map over kiln's own memory, with no copy:
// a matrix stored row-major (unit column stride) maps as a RowMajor matrix with its row stride as
// the outer stride; a transposed one (unit row stride) maps as ColMajor. Eigen packs panels of
// either layout itself, so both run at full GEMM speed. Any other layout (a strided slice, a
// stride-0 expanded row) must be made contiguous by the caller first: gemm_layout() says which
// case a matrix is in.
//
// Threads: Eigen parallelises one large GEMM with OpenMP by itself. Many small products are
// better run one per thread: the batch loop is split with parallel_for, and Eigen, which checks
// omp_get_num_threads() > 1 before opening its own parallel region, then runs single-threaded
// inside each (no oversubscription, no nested regions).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/math/matmul.hpp"

namespace kiln::cpu {

// The layouts Eigen reads in place (math/matmul.hpp: the CUDA launcher uses the same rule).
using math::GemmLayout;
using math::MatrixLayout;
using math::gemm_layout;

// The layout of the matrices formed by t's last two dims.
template <class T>
MatrixLayout gemm_layout(const Tensor<T>& t) {
  const std::size_t n = t.shape().size();
  return gemm_layout(t.shape()[n - 2], t.shape()[n - 1], t.strides()[n - 2], t.strides()[n - 1]);
}

namespace detail {

template <class T, int Order>
using MatrixMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>, Eigen::Unaligned,
                             Eigen::OuterStride<>>;
template <class T>
using OutMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

// Calls f(map) with `p` mapped as a rows x cols matrix of the given layout.
template <class T, class F>
void with_map(const T* p, std::int64_t rows, std::int64_t cols, const MatrixLayout& l, F&& f) {
  const Eigen::OuterStride<> outer(static_cast<Eigen::Index>(l.leading));
  if (l.layout == GemmLayout::row_major)
    f(MatrixMap<T, Eigen::RowMajor>(p, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols), outer));
  else
    f(MatrixMap<T, Eigen::ColMajor>(p, static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols), outer));
}

}  // namespace detail

// Outputs of at least this many elements are zeroed in parallel before the product (see gemm).
inline constexpr std::int64_t first_touch_elements = std::int64_t{1} << 18;

inline bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// c (m x n, row-major, contiguous) = a (m x k) * b (k x n), a and b in the given layouts.
template <class T>
void gemm(const T* a, const MatrixLayout& la, const T* b, const MatrixLayout& lb, T* c, std::int64_t m,
          std::int64_t k, std::int64_t n) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "cpu::gemm runs in float or double");
  if (m == 0 || n == 0) return;
  detail::OutMap<T> out(c, static_cast<Eigen::Index>(m), static_cast<Eigen::Index>(n));
  if (k == 0) {
    out.setZero();
    return;
  }
  // `out = a * b` has Eigen zero the output from one thread before accumulating into it. A freshly
  // allocated large output is not mapped yet: that first write page-faults through every page, a
  // cost that does not shrink with more cores. Zeroing it here in parallel spreads the faults over
  // the threads; Eigen then accumulates (`+=`, the same arithmetic).
  const bool touch_in_parallel = m * n >= first_touch_elements && !in_parallel_region();
  if (touch_in_parallel) parallel_for(m * n, 1, [c](std::int64_t begin, std::int64_t end) {
    std::fill(c + begin, c + end, T(0));
  });
  detail::with_map(a, m, k, la, [&](const auto& ma) {
    detail::with_map(b, k, n, lb, [&](const auto& mb) {
      if (touch_in_parallel) out.noalias() += ma * mb;
      else out.noalias() = ma * mb;
    });
  });
}

// Per-product work (m*k*n multiply-adds) below which a batch runs one product per thread rather
// than letting Eigen split each product: Eigen's own split of a 128^3 product has little to share.
inline constexpr std::int64_t gemm_parallel_work = std::int64_t{1} << 21;

// out[..., m, n] = a[..., m, k] * b[..., k, n] for every batch index. All three have the same
// number of dims and the same batch sizes (a and b may have stride 0 there: broadcast); out is
// contiguous; the matrices of a and b must have a supported gemm_layout.
template <class T>
void matmul(const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& out) {
  if (out.numel() == 0) return;
  const std::size_t nd = out.shape().size();
  const std::int64_t m = a.shape()[nd - 2], k = a.shape()[nd - 1], n = b.shape()[nd - 1];
  const MatrixLayout la = gemm_layout(a), lb = gemm_layout(b);
  check(la.layout != GemmLayout::unsupported && lb.layout != GemmLayout::unsupported && out.is_contiguous(),
        "cpu::matmul", "operand layouts not supported (strides ", a.strides(), " and ", b.strides(), ")");
  const std::int64_t batch = numel_of(Shape(out.shape().begin(), out.shape().end() - 2));
  const T* pa = a.data();
  const T* pb = b.data();
  T* pc = out.data();

  // Element offsets of batch index i in a and b (row-major order over the batch dims).
  auto offsets = [&](std::int64_t i) {
    std::int64_t oa = 0, ob = 0;
    for (std::size_t d = nd - 2; d-- > 0;) {
      const std::int64_t idx = i % out.shape()[d];
      i /= out.shape()[d];
      oa += idx * a.strides()[d];
      ob += idx * b.strides()[d];
    }
    return std::pair{oa, ob};
  };
  auto run = [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const auto [oa, ob] = offsets(i);
      gemm(pa + oa, la, pb + ob, lb, pc + i * m * n, m, k, n);
    }
  };

  const std::int64_t work = m * k * n;
  if (batch > 1 && (work < gemm_parallel_work || batch >= 4 * num_threads())) {
    Eigen::initParallel();
    parallel_for(batch, work, run);
  } else {
    run(0, batch);  // each product uses Eigen's threads
  }
}

}  // namespace kiln::cpu
