// grouped_swiglu_mlp (ops/grouped_swiglu_mlp.hpp) on the CPU: the output and every gradient equal,
// bit for bit, grouped_linear -> swiglu of its halves -> grouped_linear on the same inputs (the op
// promises that arithmetic) in double, float and bf16, with empty groups, one-row groups and odd
// widths; against plain double loops written here; a gradient check; the errors. The GPU epilogues
// are compared with the same composition in tests/kernels/test_grouped_gemm_cuda.cpp.
#include <cmath>
#include <cstring>

#include "kiln/autograd/gradcheck.hpp"
#include "kiln/ops/grouped_linear.hpp"
#include "kiln/ops/grouped_swiglu_mlp.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/view.hpp"
#include "test_util.hpp"

using namespace kiln;

namespace {

Tensor<std::int64_t> swiglu_offsets(const std::vector<std::int64_t>& sizes) {
  std::vector<std::int64_t> off{0};
  for (auto s : sizes) off.push_back(off.back() + s);
  return Tensor<std::int64_t>::from_vector(off, {static_cast<std::int64_t>(off.size())});
}

template <class T>
Tensor<T> composed_mlp(const Tensor<T>& x, const Tensor<T>& w_in, const Tensor<T>& w_out,
                       const Tensor<std::int64_t>& offsets) {
  const std::int64_t I = w_in.size(1) / 2;
  const Tensor<T> gate_up = grouped_linear(x, w_in, offsets);
  return grouped_linear(swiglu(narrow(gate_up, 1, 0, I), narrow(gate_up, 1, I, I)), w_out, offsets);
}

template <class T>
void expect_same_bits(const Tensor<T>& got, const Tensor<T>& want, const char* what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<T> g = got.to_vector(), w = want.to_vector();
  std::size_t differing = 0;
  for (std::size_t i = 0; i < g.size(); ++i) differing += std::memcmp(&g[i], &w[i], sizeof(T)) != 0;
  EXPECT_EQ(differing, 0u) << what << ": " << differing << " of " << g.size() << " elements differ";
}

template <class T>
void check_equals_composed(const std::vector<std::int64_t>& sizes, std::int64_t H, std::int64_t I, std::int64_t H_out) {
  const Tensor<std::int64_t> off = swiglu_offsets(sizes);
  const std::int64_t R = off.to_vector().back(), G = static_cast<std::int64_t>(sizes.size());
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " G " << G << " R " << R << " H " << H << " I " << I);
  const Tensor<T> x0 = cast<T>(randn<double>({R, H})), w_in0 = cast<T>(randn<double>({G, 2 * I, H}, 0.0, 0.3)),
                  w_out0 = cast<T>(randn<double>({G, H_out, I}, 0.0, 0.3)), dy = cast<T>(randn<double>({R, H_out}));
  const Tensor<T> x = clone(x0).requires_grad_(), w_in = clone(w_in0).requires_grad_(),
                  w_out = clone(w_out0).requires_grad_();
  const Tensor<T> xc = clone(x0).requires_grad_(), w_inc = clone(w_in0).requires_grad_(),
                  w_outc = clone(w_out0).requires_grad_();
  const Tensor<T> y = grouped_swiglu_mlp(x, w_in, w_out, off);
  const Tensor<T> yc = composed_mlp(xc, w_inc, w_outc, off);
  expect_same_bits(y, yc, "y");
  y.backward(dy);
  yc.backward(dy);
  expect_same_bits(x.grad(), xc.grad(), "dx");
  expect_same_bits(w_in.grad(), w_inc.grad(), "dw_in");
  expect_same_bits(w_out.grad(), w_outc.grad(), "dw_out");
}

}  // namespace

TEST(GroupedSwigluMlp, EqualsTheComposedOpsBitForBit) {
  for (const std::vector<std::int64_t>& sizes : std::vector<std::vector<std::int64_t>>{
           {1}, {3, 0, 5, 1}, {0, 0, 9}, {129, 2, 0, 17}}) {
    check_equals_composed<double>(sizes, 5, 3, 4);
    check_equals_composed<float>(sizes, 16, 8, 24);
    check_equals_composed<bf16>(sizes, 16, 8, 8);
    check_equals_composed<bf16>(sizes, 7, 5, 3);
  }
  check_equals_composed<float>({0}, 8, 8, 8);  // no rows: y empty, dW zero
}

// y[r] = Σ_i silu(a_i) b_i W_out[g][·, i], a = x·W_gateᵀ, b = x·W_upᵀ, in plain double loops.
TEST(GroupedSwigluMlp, EqualsDoubleLoops) {
  const std::vector<std::int64_t> sizes{2, 0, 3};
  const Tensor<std::int64_t> off = swiglu_offsets(sizes);
  const std::int64_t R = 5, G = 3, H = 4, I = 3, H_out = 2;
  const Tensor<double> x = randn<double>({R, H}), w_in = randn<double>({G, 2 * I, H}),
                       w_out = randn<double>({G, H_out, I});
  const std::vector<double> got = grouped_swiglu_mlp(x, w_in, w_out, off).to_vector();
  const std::vector<double> xv = x.to_vector(), wi = w_in.to_vector(), wo = w_out.to_vector();
  const std::vector<std::int64_t> o = off.to_vector();
  for (std::int64_t g = 0; g < G; ++g)
    for (std::int64_t r = o[static_cast<std::size_t>(g)]; r < o[static_cast<std::size_t>(g) + 1]; ++r)
      for (std::int64_t n = 0; n < H_out; ++n) {
        double want = 0.0;
        for (std::int64_t i = 0; i < I; ++i) {
          double a = 0.0, b = 0.0;
          for (std::int64_t h = 0; h < H; ++h) {
            a += xv[static_cast<std::size_t>(r * H + h)] * wi[static_cast<std::size_t>((g * 2 * I + i) * H + h)];
            b += xv[static_cast<std::size_t>(r * H + h)] * wi[static_cast<std::size_t>((g * 2 * I + I + i) * H + h)];
          }
          want += a / (1.0 + std::exp(-a)) * b * wo[static_cast<std::size_t>((g * H_out + n) * I + i)];
        }
        EXPECT_NEAR(got[static_cast<std::size_t>(r * H_out + n)], want, 1e-12) << "row " << r << " column " << n;
      }
}

TEST(GroupedSwigluMlp, Gradcheck) {
  const Tensor<std::int64_t> off = swiglu_offsets({2, 0, 3, 1});
  const auto result = gradcheck(
      [&](const std::vector<Tensor<double>>& in) { return grouped_swiglu_mlp(in[0], in[1], in[2], off); },
      {randn<double>({6, 4}), randn<double>({4, 6, 4}), randn<double>({4, 5, 3})});
  EXPECT_TRUE(result.ok) << result.report;
}

TEST(GroupedSwigluMlp, Errors) {
  const Tensor<std::int64_t> off = swiglu_offsets({2, 1});
  const Tensor<float> x = randn<float>({3, 4});
  EXPECT_THROW(grouped_swiglu_mlp(x, randn<float>({2, 5, 4}), randn<float>({2, 4, 2}), off), Error);  // 2I odd
  EXPECT_THROW(grouped_swiglu_mlp(x, randn<float>({2, 6, 4}), randn<float>({2, 4, 2}), off), Error);  // I 3 vs 2
  EXPECT_THROW(grouped_swiglu_mlp(x, randn<float>({2, 6, 4}), randn<float>({3, 4, 3}), off), Error);  // G 3 vs 2
  EXPECT_THROW(grouped_swiglu_mlp(x, randn<float>({2, 6, 5}), randn<float>({2, 4, 3}), off), Error);  // H 5 vs 4
  EXPECT_THROW(grouped_swiglu_mlp(x, randn<float>({2, 6, 4}), randn<float>({2, 4, 3}), swiglu_offsets({2, 2})), Error);
}
