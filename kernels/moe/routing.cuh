// DeepSeek-V3 routing on CUDA (arguments kernels/moe/args.hpp: MoeRouteArgs, MoeRouteBackwardArgs;
// front-end ops/moe.hpp, kiln::moe_route; CPU reference backend/cpu/moe.hpp).
//
// Forward, per token, from the sigmoid affinities s [E] (or the router's logits, s = T(sigmoid(l))
// formed here as the sigmoid op forms it: one launch fewer in generation) and the bias b [E]:
//   c_e = T(s_e + b_e)                          choice score, rounded to the storage type T as the
//                                               composed path (nn::MoEGate) rounds it
//   group score = T(top1 + top2 of the group's c)   (the one c for groups of one expert)
//   keep the topk_group best groups; c_e = −inf outside them
//   chosen = the K largest c, best first; ties go to the lower index (groups and experts), the
//            rule of kiln::topk, so the choice equals the composed path's wherever both see the
//            same c. An expert already chosen is marked NaN, which no comparison selects.
//   gate_k = s_k / (Σ_chosen s + 1e-20) · scaling   (normalize and K > 1), else s_k · scaling,
//            in float, rounded once.
//   Optionally also as a dense row of U ≥ E units (dense dispatch in generation, nn::MoE::
//   forward_dense): gate_k at the chosen experts, 0 at the others, 1 at units E..U−1 (the shared
//   expert's units, always on) — what a scatter into a prepared row would give, without its launches.
// Backward to the affinities (only the gates depend on them; the choice is piecewise constant):
//   ds_k = scaling / S · (dg_k − Σ_j dg_j s_j / S)   (S = Σ_chosen s + 1e-20; normalised)
//   ds_k = scaling · dg_k                             (not normalised); zero off the chosen experts.
//
// Work split: one warp per token, 8 tokens per 256-thread block. The warp copies its token's E
// choice scores to shared memory (E ≤ kMaxExperts, in the compute type), lanes stride over the groups for the
// group scores, and every selection (topk_group groups, then K experts) is a warp-wide argmax:
// each lane scans its strided share, then 5 shuffle steps. K·E/32 comparisons a lane — for
// DeepSeek-V3 (E 256, K 8, 8 groups) 64 — so the kernel is bound by reading s: 2·E bytes (bf16)
// per token, 4 MB for 8192 tokens at E 256, a few microseconds on an H200.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/kernels/common/cuda_check.hpp"
#include "kiln/kernels/common/device_guard.hpp"
#include "kiln/kernels/common/dispatch_dtype.cuh"
#include "kiln/kernels/common/element.cuh"
#include "kiln/kernels/common/launch.cuh"
#include "kiln/kernels/common/reduce.cuh"
#include "kiln/kernels/moe/args.hpp"
#include "kiln/math/unary.hpp"

namespace kiln::kernels::moe {

constexpr int kRouteWarps = 8;       // tokens per block
constexpr int kMaxExperts = 1024;    // shared memory: kRouteWarps · (E + n_group) floats (64 KB at most)
constexpr int kMaxTopK = 32;         // one lane per chosen expert for the gates

// The warp's best (value, index) over candidates v[i] at indices i; larger value wins, then the
// lower index. Lanes pass their own best; every lane returns the warp's.
template <class C>
__device__ __forceinline__ void warp_argmax(C& value, int& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const C v = __shfl_xor_sync(0xffffffffu, value, offset);
    const int i = __shfl_xor_sync(0xffffffffu, index, offset);
    if (v > value || (v == value && i < index)) {
      value = v;
      index = i;
    }
  }
}

// Best of c[0, n) strided over the lanes, as above; an index >= n when none qualifies (every
// candidate NaN).
template <class C>
__device__ __forceinline__ int warp_best(const C* c, int n, int lane) {
  C best = -INFINITY;
  int at = 0x7fffffff;
  for (int i = lane; i < n; i += 32) {
    const C v = c[i];
    if (v > best || (v == best && i < at)) {
      best = v;
      at = i;
    }
  }
  warp_argmax(best, at);
  return at;
}

template <class T>
__global__ void __launch_bounds__(kRouteWarps * 32) route_forward(MoeRouteArgs a) {
  using C = compute_t<T>;  // float, or double for double scores
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int E = a.n_experts, K = a.top_k, G = a.n_group;
  C* c = reinterpret_cast<C*>(shared_bytes) + warp * (E + G);  // E choice scores, then G group scores
  C* group_score = c + E;
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (n >= a.tokens) return;  // whole warps leave: no block barrier follows
  const T* s = static_cast<const T*>(a.scores) + n * E;
  const T* b = static_cast<const T*>(a.bias);
  const bool logits = a.logits;
  const auto affinity = [s, logits](int e) {  // s_e, rounded to T as the sigmoid op's output is
    const C v = load(s[e]);
    return logits ? load(store<T>(math::sigmoid_of(v))) : v;
  };
  for (int e = lane; e < E; e += 32) c[e] = load(store<T>(affinity(e) + load(b[e])));
  __syncwarp();

  if (a.topk_group < G) {
    const int per_group = E / G;
    for (int g = lane; g < G; g += 32) {
      C top1 = -INFINITY, top2 = -INFINITY;
      for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
        const C v = c[e];
        if (v > top1) {
          top2 = top1;
          top1 = v;
        } else if (v > top2) {
          top2 = v;
        }
      }
      group_score[g] = per_group == 1 ? top1 : load(store<T>(top1 + top2));
    }
    __syncwarp();
    // Keep topk_group groups: each pick marks its group NaN (taken) in group_score.
    for (int pick = 0; pick < a.topk_group; ++pick) {
      const int g = warp_best(group_score, G, lane);
      __syncwarp();
      if (lane == 0 && g < G) group_score[g] = NAN;
      __syncwarp();
    }
    // Groups not kept (not NaN) lose their experts.
    for (int e = lane; e < E; e += 32)
      if (!isnan(group_score[e / per_group])) c[e] = -INFINITY;
    __syncwarp();
  }

  int mine = 0;  // lane k holds the k-th chosen expert
  for (int k = 0; k < K; ++k) {
    int e = warp_best(c, E, lane);
    if (e >= E) e = E - 1;  // every score NaN: keep the index in range
    __syncwarp();
    if (lane == 0) c[e] = NAN;
    if (lane == k) mine = e;
    __syncwarp();
  }
  const C sk = lane < K ? affinity(mine) : C(0);
  const C total = warp_sum(sk);
  if (a.dense) {  // the row's zeros and ones first; __syncwarp orders them before the gates below
    T* row = static_cast<T*>(a.dense) + n * a.dense_units;
    for (int u = lane; u < a.dense_units; u += 32) row[u] = store<T>(u < E ? C(0) : C(1));
    __syncwarp();
  }
  if (lane < K) {
    const C gate = a.normalize && K > 1 ? sk / (total + C(1e-20)) : sk;
    const T g = store<T>(gate * static_cast<C>(a.scaling));
    a.experts[n * K + lane] = mine;
    static_cast<T*>(a.gates)[n * K + lane] = g;
    if (a.dense) static_cast<T*>(a.dense)[n * a.dense_units + mine] = g;
  }
}

template <class T>
__global__ void __launch_bounds__(kRouteWarps * 32) route_backward(MoeRouteBackwardArgs a) {
  using C = compute_t<T>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int E = a.n_experts, K = a.top_k;
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (n >= a.tokens) return;
  T* ds = static_cast<T*>(a.dscores) + n * E;
  for (int e = lane; e < E; e += 32) ds[e] = store<T>(C(0));
  int e = 0;
  C sk = 0, dg = 0;
  if (lane < K) {
    e = static_cast<int>(a.experts[n * K + lane]);
    sk = load(static_cast<const T*>(a.scores)[n * E + e]);
    dg = load(static_cast<const T*>(a.dgates)[n * K + lane]);
  }
  const C scaling = static_cast<C>(a.scaling);
  C d = scaling * dg;
  if (a.normalize && K > 1) {
    const C total = warp_sum(sk) + C(1e-20);
    const C dot = warp_sum(dg * sk);
    d = scaling / total * (dg - dot / total);
  }
  __syncwarp();  // the zeros above land before the chosen entries
  if (lane < K && e >= 0 && e < E) ds[e] = store<T>(d);
}

inline unsigned route_blocks(std::int64_t tokens) {
  return static_cast<unsigned>((tokens + kRouteWarps - 1) / kRouteWarps);
}

inline void launch_moe_route(const MoeRouteArgs& a) {
  if (a.tokens == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_route", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const std::size_t shared =
        static_cast<std::size_t>(kRouteWarps) * (a.n_experts + a.n_group) * sizeof(compute_t<T>);
    opt_in_shared_memory(&route_forward<T>, shared, a.launch.device);  // double at E > 384
    route_forward<T><<<route_blocks(a.tokens), kRouteWarps * 32, shared, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline void launch_moe_route_backward(const MoeRouteBackwardArgs& a) {
  if (a.tokens == 0) return;
  cuda::DeviceGuard guard(a.launch.device);
  with_floating_type("moe_route backward", a.dtype, [&](auto tag) {
    using T = decltype(tag);
    route_backward<T><<<route_blocks(a.tokens), kRouteWarps * 32, 0, a.launch.stream>>>(a);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

inline const bool moe_routing_registered =
    register_device_kernel(&launch_moe_route) && register_device_kernel(&launch_moe_route_backward);

}  // namespace kiln::kernels::moe
