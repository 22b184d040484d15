// CPU reference of the grouped GEMM (kernels/grouped_gemm/; front-ends ops/grouped_linear.hpp and
// ops/grouped_swiglu_mlp.hpp): the three products and the SwiGLU epilogues in plain loops,
// accumulated in the compute type (float for bf16/fp16/float, double for double), in a fixed order.
// Group g owns rows offsets[g] .. offsets[g+1] − 1 (checked by the front-end).
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/dtype.hpp"
#include "kiln/core/low_precision.hpp"
#include "kiln/math/swiglu.hpp"

namespace kiln::cpu {

// y [R, N]: y[r] = x[r] · W_gᵀ, W [G, N, K].
template <class T>
void grouped_gemm_forward(const T* x, const T* w, const std::int64_t* offsets, T* y, int G, std::int64_t N,
                          std::int64_t K) {
  using C = compute_t<T>;
  for (int g = 0; g < G; ++g) {
    const T* wg = w + static_cast<std::int64_t>(g) * N * K;
    for (std::int64_t r = offsets[g]; r < offsets[g + 1]; ++r)
      for (std::int64_t n = 0; n < N; ++n) {
        C acc = 0;
        for (std::int64_t k = 0; k < K; ++k) acc += static_cast<C>(x[r * K + k]) * static_cast<C>(wg[n * K + k]);
        y[r * N + n] = T(acc);
      }
  }
}

// dx [R, K]: dx[r] = dy[r] · W_g.
template <class T>
void grouped_gemm_dgrad(const T* dy, const T* w, const std::int64_t* offsets, T* dx, int G, std::int64_t N,
                        std::int64_t K) {
  using C = compute_t<T>;
  std::vector<C> acc(static_cast<std::size_t>(K));
  for (int g = 0; g < G; ++g) {
    const T* wg = w + static_cast<std::int64_t>(g) * N * K;
    for (std::int64_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      std::fill(acc.begin(), acc.end(), C(0));
      for (std::int64_t n = 0; n < N; ++n) {
        const C d = static_cast<C>(dy[r * N + n]);
        for (std::int64_t k = 0; k < K; ++k) acc[static_cast<std::size_t>(k)] += d * static_cast<C>(wg[n * K + k]);
      }
      for (std::int64_t k = 0; k < K; ++k) dx[r * K + k] = T(acc[static_cast<std::size_t>(k)]);
    }
  }
}

// dW [G, N, K]: dW_g = Σ_{r in g} dy[r]ᵀ x[r] (zero for an empty group).
template <class T>
void grouped_gemm_wgrad(const T* dy, const T* x, const std::int64_t* offsets, T* dw, int G, std::int64_t N,
                        std::int64_t K) {
  using C = compute_t<T>;
  std::vector<C> acc(static_cast<std::size_t>(N * K));
  for (int g = 0; g < G; ++g) {
    std::fill(acc.begin(), acc.end(), C(0));
    for (std::int64_t r = offsets[g]; r < offsets[g + 1]; ++r)
      for (std::int64_t n = 0; n < N; ++n) {
        const C d = static_cast<C>(dy[r * N + n]);
        for (std::int64_t k = 0; k < K; ++k) acc[static_cast<std::size_t>(n * K + k)] += d * static_cast<C>(x[r * K + k]);
      }
    T* dwg = dw + static_cast<std::int64_t>(g) * N * K;
    for (std::int64_t i = 0; i < N * K; ++i) dwg[i] = T(acc[static_cast<std::size_t>(i)]);
  }
}

// The SwiGLU epilogues (kernels/grouped_gemm/args.hpp: GroupedGemmEpilogue) over R rows of expert
// width I, in the compute type from the rounded values, each result rounded once:
// act [R, I] = silu(gate)·up from gate_up [R, 2I] (gate columns, then up columns of each row) ...
template <class T>
void swiglu_rows(const T* gate_up, T* act, std::int64_t R, std::int64_t I) {
  using C = compute_t<T>;
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t j = 0; j < I; ++j)
      act[r * I + j] =
          convert<T>(math::Swiglu{}(static_cast<C>(gate_up[r * 2 * I + j]), static_cast<C>(gate_up[r * 2 * I + I + j])));
}

// ... and its backward: d_gate_up [R, 2I] from the gradient d_act [R, I] and gate_up.
template <class T>
void swiglu_rows_backward(const T* d_act, const T* gate_up, T* d_gate_up, std::int64_t R, std::int64_t I) {
  using C = compute_t<T>;
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t j = 0; j < I; ++j) {
      const auto d = math::SwigluGrad{}(static_cast<C>(d_act[r * I + j]), static_cast<C>(gate_up[r * 2 * I + j]),
                                        static_cast<C>(gate_up[r * 2 * I + I + j]));
      d_gate_up[r * 2 * I + j] = convert<T>(d.gate);
      d_gate_up[r * 2 * I + I + j] = convert<T>(d.up);
    }
}

}  // namespace kiln::cpu
