// The online softmax rule on the device: a row's max m and s = sum exp(x - m) in one pass, each
// thread keeping a running max and a sum rescaled whenever the max grows
// (s <- s * exp(m_old - m_new) + exp(x - m_new)); two partial states combine the same way. Shared
// by the softmax kernels (kernels/softmax/softmax.cuh) and the fused cross-entropy
// (kernels/cross_entropy/cross_entropy.cuh), with the fast exp/log they use.
#pragma once

#include <cmath>

namespace kiln::kernels {

// The hardware exp2 (MUFU.EX2) after one multiply: 2 instructions where expf takes about 8,
// which matters at bf16 rates (an exp per element per pass). Error: about 2 ulp near 0, growing
// by one ulp per unit of |x|, i.e. only where exp(x) is small next to the row's largest terms
// (those near x - max = 0 dominate every sum and every normalised output).
__device__ __forceinline__ float exp_c(float x) { return __expf(x); }
// 2^x as the one MUFU.EX2 instruction (ex2.approx.ftz: relative error about 2^-22, results below
// 2^-126 flushed to zero, 2^-inf = 0). exp2f adds a range check and two multiplies around it for
// results in the denormal range, which softmax terms that small (2^-126 of the row's largest)
// never need.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double exp_c(double x) { return ::exp(x); }
__device__ __forceinline__ float log_c(float x) { return logf(x); }
__device__ __forceinline__ double log_c(double x) { return ::log(x); }

// exp(a - m) for a <= m, taking equal arguments as exactly 1 (so that m = -inf, a = -inf does not
// give exp(NaN): a thread that has seen only -inf holds a sum that is wiped out once any finite
// value arrives, or leaves the row NaN if none does).
template <class C>
__device__ __forceinline__ C exp_below(C a, C m) {
  return a == m ? C(1) : exp_c(a - m);
}

// Running max m and sum s of exp(x - m) (S: the sum's type).
template <class C, class S>
struct OnlineMaxSum {
  C m;
  S s;

  __device__ static OnlineMaxSum identity() { return {-static_cast<C>(INFINITY), S(0)}; }
  // A NaN x is never > m; it lands in the sum and makes it NaN.
  __device__ void add(C x) {
    if (x > m) {
      s = s * static_cast<S>(exp_below(m, x)) + S(1);
      m = x;
    } else {
      s += static_cast<S>(exp_below(x, m));
    }
  }
  // Symmetric in a and b (bit for bit), as the warp butterfly needs.
  __device__ static OnlineMaxSum combine(const OnlineMaxSum& a, const OnlineMaxSum& b) {
    const C m = a.m > b.m ? a.m : b.m;
    return {m, a.s * static_cast<S>(exp_below(a.m, m)) + b.s * static_cast<S>(exp_below(b.m, m))};
  }
};

}  // namespace kiln::kernels
