// Row kernels of softmax and log_softmax on the CPU, and the row walk (for_each_row) and online
// max/sum that the fused cross-entropy (backend/cpu/cross_entropy.hpp) shares.
//
// A "row" is the 1-D slice along the softmax dim through one position of the other dims. The
// kernels below work on one row with unit stride; for_each_row feeds them the rows of tensors of
// any layout. Rows along the last dim of a contiguous tensor are used in place. Strided rows
// (softmax over an inner dim, transposed inputs) go through per-thread scratch rows: a group of
// neighbouring rows is copied in and out together, so each cache line of the tensor is read once
// per group instead of once per row (a column-by-column walk would re-read it for every row).
//
// Every row is computed by one thread start to end, with the same kernel on the same values
// whichever path it takes, so results are the same for any thread count. Sums are accumulated in
// double; exponentials run in the element's compute type (float for float rows: each term is then
// exact to float rounding and the double sum loses nothing more).
//
// Stability: every exponent is x - max(row) <= 0, so nothing overflows, and the largest term is
// exactly 1, so the sum never underflows to 0 (unless the row is all -inf, which gives NaN, as in
// PyTorch).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/tensor.hpp"

namespace kiln::cpu {

// The rows of a tensor of (shape, strides) along `dim`: row r runs over the other dims in
// row-major order.
struct Rows {
  Shape kept_shape;
  Strides kept_strides;
  std::int64_t length = 0;  // elements per row
  std::int64_t step = 0;    // stride between them

  Rows(const Shape& shape, const Strides& strides, int dim) {
    for (std::size_t d = 0; d < shape.size(); ++d) {
      if (static_cast<int>(d) == dim) continue;
      kept_shape.push_back(shape[d]);
      kept_strides.push_back(strides[d]);
    }
    length = shape.empty() ? 1 : shape[static_cast<std::size_t>(dim)];
    step = shape.empty() ? 1 : strides[static_cast<std::size_t>(dim)];
  }
  template <class T>
  Rows(const Tensor<T>& t, int dim) : Rows(t.shape(), t.strides(), dim) {}

  std::int64_t count() const { return numel_of(kept_shape); }
  std::int64_t offset(std::int64_t r) const {
    std::int64_t off = 0;
    for (std::size_t d = kept_shape.size(); d-- > 0;) {
      off += (r % kept_shape[d]) * kept_strides[d];
      r /= kept_shape[d];
    }
    return off;
  }
  bool unit_stride() const { return step == 1 || length <= 1; }
};

// One operand of for_each_row: its first element and its rows (all operands have the same row
// count and length).
template <class T>
struct RowOperand {
  T* data;
  Rows rows;
};

// Calls body(r, in, out) for every row r, where in[k] / out[k] point at row r of operand k with
// unit stride: into the tensor itself, or into a scratch row that is filled from the input
// before the call and copied to the output after it.
// Rows whose starts are adjacent fill one 64-byte cache line together.
template <class T>
inline constexpr std::int64_t rows_per_cache_line = sizeof(T) >= 64 ? 1 : 64 / static_cast<std::int64_t>(sizeof(T));

template <class T, std::size_t NI, std::size_t NO>
const Rows& first_rows(const std::array<RowOperand<const T>, NI>& in, const std::array<RowOperand<T>, NO>& out) {
  if constexpr (NI > 0) return in[0].rows;
  else return out[0].rows;
}

template <class T, std::size_t NI, std::size_t NO, class Body>
void for_each_row(const std::array<RowOperand<const T>, NI>& in, const std::array<RowOperand<T>, NO>& out,
                  Body&& body) {
  const Rows& shape = first_rows(in, out);
  const std::int64_t rows = shape.count(), n = shape.length;
  // exp costs several simple operations: weight rows by it so short rows still spread over threads.
  const std::int64_t cost = 8 * std::max<std::int64_t>(n, 1);
  bool all_unit = true;
  for (const auto& op : in) all_unit = all_unit && op.rows.unit_stride();
  for (const auto& op : out) all_unit = all_unit && op.rows.unit_stride();
  if (all_unit) {
    parallel_for(rows, cost, [&](std::int64_t begin, std::int64_t end) {
      std::array<const T*, NI> pi;
      std::array<T*, NO> po;
      for (std::int64_t r = begin; r < end; ++r) {
        for (std::size_t k = 0; k < NI; ++k) pi[k] = in[k].data + in[k].rows.offset(r);
        for (std::size_t k = 0; k < NO; ++k) po[k] = out[k].data + out[k].rows.offset(r);
        body(r, pi, po);
      }
    });
    return;
  }
  // Groups of rows that span a cache line when their starts are adjacent (the common case: the
  // softmax dim is not the last one and the last one is contiguous).
  constexpr std::int64_t group = rows_per_cache_line<T>;
  const std::int64_t groups = (rows + group - 1) / group;
  parallel_for(groups, cost * group, [&](std::int64_t g_begin, std::int64_t g_end) {
    std::vector<T> scratch(static_cast<std::size_t>((NI + NO) * group * n));
    auto scratch_row = [&](std::size_t operand, std::int64_t b) {
      return scratch.data() + (static_cast<std::int64_t>(operand) * group + b) * n;
    };
    std::array<std::int64_t, group> start;
    std::array<const T*, NI> pi;
    std::array<T*, NO> po;
    for (std::int64_t g = g_begin; g < g_end; ++g) {
      const std::int64_t r0 = g * group, count = std::min(group, rows - r0);
      for (std::size_t k = 0; k < NI; ++k) {
        const Rows& rk = in[k].rows;
        if (rk.unit_stride()) continue;
        for (std::int64_t b = 0; b < count; ++b) start[static_cast<std::size_t>(b)] = rk.offset(r0 + b);
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t b = 0; b < count; ++b)
            scratch_row(k, b)[i] = in[k].data[start[static_cast<std::size_t>(b)] + i * rk.step];
      }
      for (std::int64_t b = 0; b < count; ++b) {
        const std::int64_t r = r0 + b;
        for (std::size_t k = 0; k < NI; ++k)
          pi[k] = in[k].rows.unit_stride() ? in[k].data + in[k].rows.offset(r) : scratch_row(k, b);
        for (std::size_t k = 0; k < NO; ++k)
          po[k] = out[k].rows.unit_stride() ? out[k].data + out[k].rows.offset(r) : scratch_row(NI + k, b);
        body(r, pi, po);
      }
      for (std::size_t k = 0; k < NO; ++k) {
        const Rows& rk = out[k].rows;
        if (rk.unit_stride()) continue;
        for (std::int64_t b = 0; b < count; ++b) start[static_cast<std::size_t>(b)] = rk.offset(r0 + b);
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t b = 0; b < count; ++b)
            out[k].data[start[static_cast<std::size_t>(b)] + i * rk.step] = scratch_row(NI + k, b)[i];
      }
    }
  });
}

// The max of a row and the sum of exp(x - max), in one pass: when a larger element arrives, the
// sum so far is rescaled by exp(old_max - new_max). For log_softmax and cross-entropy, which need
// only these two numbers before the output pass, this reads the row once instead of twice.
// (softmax itself takes the max first, then stores each exp(x - max) in its output: one exp per
// element, where the online pass would compute every exp twice.)
template <class T>
struct MaxSum {
  compute_t<T> max;
  double sum;
};

template <class T>
MaxSum<T> online_max_sum(const T* x, std::int64_t n) {
  using C = compute_t<T>;
  constexpr C neg_inf = -std::numeric_limits<C>::infinity();
  C m = neg_inf;
  double s = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const C v = static_cast<C>(x[i]);
    if (v > m) {
      s = s * std::exp(static_cast<double>(m) - static_cast<double>(v)) + 1.0;
      m = v;
    } else if (v != neg_inf) {  // -inf adds exp(-inf) = 0; skipping it avoids -inf - -inf = NaN
      s += static_cast<double>(std::exp(v - m));  // a NaN v makes s NaN, as it should
    }
  }
  return {m, s};
}

template <class T>
void softmax_row(const T* x, T* y, std::int64_t n) {
  using C = compute_t<T>;
  C m = -std::numeric_limits<C>::infinity();
  for (std::int64_t i = 0; i < n; ++i) {
    const C v = static_cast<C>(x[i]);
    m = (v > m || v != v) ? v : m;  // NaN sticks
  }
  double s = 0.0;
  if constexpr (std::is_same_v<T, C>) {
    for (std::int64_t i = 0; i < n; ++i) {
      const C e = std::exp(x[i] - m);
      y[i] = e;
      s += static_cast<double>(e);
    }
    const C inv = static_cast<C>(1.0 / s);
    for (std::int64_t i = 0; i < n; ++i) y[i] *= inv;
  } else {  // storing exp in a low-precision y and scaling it there would round twice
    for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(std::exp(static_cast<C>(x[i]) - m));
    const C inv = static_cast<C>(1.0 / s);
    for (std::int64_t i = 0; i < n; ++i) y[i] = convert<T>(std::exp(static_cast<C>(x[i]) - m) * inv);
  }
}

template <class T>
void log_softmax_row(const T* x, T* y, std::int64_t n) {
  using C = compute_t<T>;
  // (x - max) - log(sum), not x - (max + log(sum)): for large x, max + log(sum) rounded to C would
  // carry max's rounding error (an ulp of max) into outputs that may be small.
  const MaxSum<T> ms = online_max_sum(x, n);
  const C log_sum = static_cast<C>(std::log(ms.sum));
  for (std::int64_t i = 0; i < n; ++i) y[i] = convert<T>((static_cast<C>(x[i]) - ms.max) - log_sum);
}

// y = softmax(x) or log_softmax(x) along rows.
template <class T>
void softmax_rows(const T* x, const Rows& xr, T* y, const Rows& yr, bool log) {
  const std::int64_t n = xr.length;
  for_each_row<T, 1, 1>({RowOperand<const T>{x, xr}}, {RowOperand<T>{y, yr}},
                        [n, log](std::int64_t, const auto& in, const auto& out) {
                          log ? log_softmax_row(in[0], out[0], n) : softmax_row(in[0], out[0], n);
                        });
}

// Input gradient of softmax (log=false) or log_softmax (log=true) from the output y and the output
// gradient g:   softmax:     gx = y * (g - sum(g * y))
//               log_softmax: gx = g - exp(y) * sum(g)      (exp(y) is the softmax)
template <class T>
void softmax_backward_rows(const T* g, const Rows& gr, const T* y, const Rows& yr, T* gx, const Rows& xr,
                           bool log) {
  using C = compute_t<T>;
  const std::int64_t n = yr.length;
  for_each_row<T, 2, 1>({RowOperand<const T>{g, gr}, RowOperand<const T>{y, yr}}, {RowOperand<T>{gx, xr}},
                        [n, log](std::int64_t, const auto& in, const auto& out) {
    const T* gi = in[0];
    const T* yi = in[1];
    T* gxi = out[0];
    double acc = 0.0;
    if (log) {
      for (std::int64_t i = 0; i < n; ++i) acc += static_cast<double>(gi[i]);
      const C a = static_cast<C>(acc);
      for (std::int64_t i = 0; i < n; ++i)
        gxi[i] = convert<T>(static_cast<C>(gi[i]) - std::exp(static_cast<C>(yi[i])) * a);
    } else {
      for (std::int64_t i = 0; i < n; ++i) acc += static_cast<double>(gi[i]) * static_cast<double>(yi[i]);
      const C a = static_cast<C>(acc);
      for (std::int64_t i = 0; i < n; ++i)
        gxi[i] = convert<T>(static_cast<C>(yi[i]) * (static_cast<C>(gi[i]) - a));
    }
  });
}

// ---- causal softmax of attention scores (nn::causal_softmax on the CPU) ------------------------

// Rows of scores [..., Sq, Sk], contiguous: row r is query q = r % Sq, which sees keys [lo, hi]:
// hi = q + Sk - Sq (the causal diagonal, queries aligned to the last keys), lo = begin[q] for a
// packed row (the first key of q's sequence; begin null: 0).
struct CausalRows {
  std::int64_t rows, Sq, Sk;
  const std::int64_t* begin;
  std::int64_t lo(std::int64_t r) const { return begin ? begin[r % Sq] : 0; }
  std::int64_t hi(std::int64_t r) const { return r % Sq + Sk - Sq; }
};

// y = softmax(scale · x) over each row's visible keys, 0 elsewhere. The arithmetic is that of the
// composed ops this replaces — mul(x, scale) rounded to T, masked_fill(-inf), softmax — term for
// term: there the hidden keys' terms are exp(-inf) = 0, which leave the row's max and its running
// double sum exactly as they are, so skipping them gives the same bits, with one pass instead of
// three and about half the row's exponentials.
template <class T>
void causal_softmax_forward(const T* x, T* y, const CausalRows& c, T scale) {
  using C = compute_t<T>;
  parallel_for(c.rows, 4 * std::max<std::int64_t>(c.Sk, 1), [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> t(static_cast<std::size_t>(c.Sk));  // the row's visible scores, scaled
    for (std::int64_t r = begin; r < end; ++r) {
      const std::int64_t lo = c.lo(r), hi = c.hi(r);
      const T* xr = x + r * c.Sk;
      T* yr = y + r * c.Sk;
      for (std::int64_t j = lo; j <= hi; ++j)
        t[static_cast<std::size_t>(j - lo)] = convert<T>(static_cast<C>(xr[j]) * static_cast<C>(scale));
      std::fill(yr, yr + lo, convert<T>(0.0));
      std::fill(yr + hi + 1, yr + c.Sk, convert<T>(0.0));
      softmax_row(t.data(), yr + lo, hi - lo + 1);
    }
  });
}

// Its gradient: softmax's backward over the visible keys (softmax_backward_rows: the hidden keys'
// y = 0 add nothing to sum(g * y)), rounded to T, times scale (mul's backward), 0 for the hidden
// keys (masked_fill's backward).
template <class T>
void causal_softmax_backward(const T* g, const T* y, T* gx, const CausalRows& c, T scale) {
  using C = compute_t<T>;
  parallel_for(c.rows, 2 * std::max<std::int64_t>(c.Sk, 1), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const std::int64_t lo = c.lo(r), hi = c.hi(r);
      const T* gr = g + r * c.Sk;
      const T* yr = y + r * c.Sk;
      T* out = gx + r * c.Sk;
      double acc = 0.0;
      for (std::int64_t j = lo; j <= hi; ++j) acc += static_cast<double>(gr[j]) * static_cast<double>(yr[j]);
      const C a = static_cast<C>(acc);
      std::fill(out, out + lo, convert<T>(0.0));
      std::fill(out + hi + 1, out + c.Sk, convert<T>(0.0));
      for (std::int64_t j = lo; j <= hi; ++j) {
        const T d = convert<T>(static_cast<C>(yr[j]) * (static_cast<C>(gr[j]) - a));
        out[j] = convert<T>(static_cast<C>(d) * static_cast<C>(scale));
      }
    }
  });
}

}  // namespace kiln::cpu
