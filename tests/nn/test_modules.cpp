// nn building blocks (nn/linear.hpp, nn/attention.hpp): Linear, Embedding, RMSNorm, SwiGLUMLP and
// causal attention against plain double loops, finite-difference gradient checks in every input
// and parameter, parameter names, deterministic initialisation, and shape errors.
#include <kiln/nn/attention.hpp>
#include <kiln/nn/linear.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "nn_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

double at(const Vec& v, std::int64_t i) { return v[static_cast<std::size_t>(i)]; }

// y [rows, out] = x [rows, in] · Wᵀ + b (b may be empty).
Vec ref_linear(const Vec& x, const Vec& w, const Vec& b, std::int64_t rows, std::int64_t in, std::int64_t out) {
  Vec y(static_cast<std::size_t>(rows * out));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : at(b, o);
      for (std::int64_t i = 0; i < in; ++i) s += at(x, r * in + i) * at(w, o * in + i);
      y[static_cast<std::size_t>(r * out + o)] = s;
    }
  return y;
}

Vec ref_rms_norm(const Vec& x, const Vec& w, std::int64_t rows, std::int64_t d, double eps) {
  Vec y(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (std::int64_t i = 0; i < d; ++i) ms += at(x, r * d + i) * at(x, r * d + i);
    const double inv = 1.0 / std::sqrt(ms / static_cast<double>(d) + eps);
    for (std::int64_t i = 0; i < d; ++i) y[static_cast<std::size_t>(r * d + i)] = at(x, r * d + i) * inv * at(w, i);
  }
  return y;
}

}  // namespace

TEST(NnLinear, ForwardMatchesReference) {
  Generator gen{11, 0};
  nn::Linear<double> with_bias(7, 5, true, 0.3, gen), without(7, 5, false, 0.3, gen);
  randomize(with_bias, 1);
  const Tensor<double> x = randn<double>({2, 3, 7});
  const Tensor<double> xt = transpose(randn<double>({3, 2, 7}), 0, 1);  // non-contiguous [2, 3, 7]
  for (const Tensor<double>& in : {x, xt}) {
    const Tensor<double> y = with_bias(in);
    EXPECT_EQ(y.shape(), (Shape{2, 3, 5}));
    EXPECT_LT(relative_error(y.to_vector(), ref_linear(in.to_vector(), with_bias.weight.to_vector(),
                                                       with_bias.bias.to_vector(), 6, 7, 5)),
              1e-14);
    EXPECT_LT(relative_error(without(in).to_vector(),
                             ref_linear(in.to_vector(), without.weight.to_vector(), {}, 6, 7, 5)),
              1e-14);
  }
  // A single vector [in] -> [out].
  const Tensor<double> v = randn<double>({7});
  EXPECT_EQ(without(v).shape(), (Shape{5}));
  EXPECT_LT(relative_error(without(v).to_vector(), ref_linear(v.to_vector(), without.weight.to_vector(), {}, 1, 7, 5)),
            1e-14);
}

TEST(NnLinear, FloatForward) {
  Generator gen{12, 0};
  nn::Linear<float> l(33, 17, true, 0.2, gen);
  l.bias = randn<float>({17}).requires_grad_();
  const Tensor<float> x = randn<float>({4, 33});
  Vec xd, wd, bd;
  for (float f : x.to_vector()) xd.push_back(f);
  for (float f : l.weight.to_vector()) wd.push_back(f);
  for (float f : l.bias.to_vector()) bd.push_back(f);
  EXPECT_LT(relative_error(l(x).to_vector(), ref_linear(xd, wd, bd, 4, 33, 17)), 1e-6);
}

TEST(NnLinear, Gradcheck) {
  Generator gen{13, 0};
  nn::Linear<double> l(5, 3, true, 0.5, gen);
  randomize(l, 2);
  auto f = [&](const std::vector<Tensor<double>>& x) { return l(x[0]); };
  auto r = module_gradcheck(l, {randn<double>({2, 3, 5})}, f);
  EXPECT_TRUE(r.ok) << r.report;
  r = module_gradcheck(l, {transpose(randn<double>({5, 1}), 0, 1).detach()}, f);  // non-contiguous [1, 5]
  EXPECT_TRUE(r.ok) << r.report;
  nn::Linear<double> nb(4, 6, false, 0.5, gen);
  r = module_gradcheck(nb, {randn<double>({3, 4})}, [&](const std::vector<Tensor<double>>& x) { return nb(x[0]); });
  EXPECT_TRUE(r.ok) << r.report;

  // The helper really checks the parameters: a forward that hides the weight from autograd fails.
  r = module_gradcheck(nb, {randn<double>({3, 4})},
                       [&](const std::vector<Tensor<double>>& x) { return nn::linear(x[0], nb.weight.detach()); });
  EXPECT_FALSE(r.ok);
}

TEST(NnLinear, NamesInitAndErrors) {
  Generator a{21, 0}, b{21, 0};
  nn::Linear<double> l1(200, 100, true, 0.02, a), l2(200, 100, true, 0.02, b);
  EXPECT_EQ(state_names(l1), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(l1.weight.shape(), (Shape{100, 200}));
  EXPECT_EQ(l1.weight.to_vector(), l2.weight.to_vector());  // same seed, same bits
  EXPECT_TRUE(l1.weight.requires_grad() && l1.bias.requires_grad());
  for (double v : l1.bias.to_vector()) EXPECT_EQ(v, 0.0);
  double ss = 0.0, sum = 0.0;
  for (double v : l1.weight.to_vector()) ss += v * v, sum += v;
  EXPECT_NEAR(std::sqrt(ss / 20000.0), 0.02, 0.02 * 0.03);
  EXPECT_NEAR(sum / 20000.0, 0.0, 0.02 * 0.03);
  EXPECT_EQ(l1.num_parameters(), 200 * 100 + 100);

  Generator g{1, 0};
  nn::Linear<double> nb(7, 5, false, 0.02, g);
  EXPECT_EQ(state_names(nb), (std::vector<std::string>{"weight"}));
  EXPECT_KILN_ERROR(nb(randn<double>({2, 6})), "linear", "[2, 6]", "[5, 7]");
  EXPECT_KILN_ERROR(nn::Linear<double>(0, 5, false, 0.02, g), "Linear");
}

TEST(NnEmbedding, ForwardGradcheckNames) {
  Generator gen{31, 0};
  nn::Embedding<double> e(11, 6, 1.0, gen);
  EXPECT_EQ(state_names(e), (std::vector<std::string>{"weight"}));
  EXPECT_EQ(e.weight.shape(), (Shape{11, 6}));
  const Tensor<std::int64_t> ids = tensor<std::int64_t>({3, 0, 10, 3, 7, 3}, {2, 3});
  const Tensor<double> y = e(ids);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 6}));
  const Vec w = e.weight.to_vector(), yv = y.to_vector();
  const std::vector<std::int64_t> idv = ids.to_vector();
  for (std::size_t p = 0; p < idv.size(); ++p)
    for (std::int64_t j = 0; j < 6; ++j)
      EXPECT_EQ(yv[p * 6 + static_cast<std::size_t>(j)], at(w, idv[p] * 6 + j));
  auto r = module_gradcheck(e, {}, [&](const std::vector<Tensor<double>>&) { return e(ids); });  // repeated id 3
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_KILN_ERROR(e(tensor<std::int64_t>({11})), "embedding", "11");
}

TEST(NnRMSNorm, ForwardGradcheckNames) {
  nn::RMSNorm<double> n(9, 1e-5);
  EXPECT_EQ(state_names(n), (std::vector<std::string>{"weight"}));
  for (double v : n.weight.to_vector()) EXPECT_EQ(v, 1.0);
  randomize(n, 3);
  const Tensor<double> x = randn<double>({4, 9});
  EXPECT_LT(relative_error(n(x).to_vector(), ref_rms_norm(x.to_vector(), n.weight.to_vector(), 4, 9, 1e-5)), 1e-14);
  // eps matters: small inputs are damped by it.
  const Tensor<double> small = mul(randn<double>({1, 9}), 1e-3);
  EXPECT_LT(relative_error(n(small).to_vector(), ref_rms_norm(small.to_vector(), n.weight.to_vector(), 1, 9, 1e-5)),
            1e-14);
  auto r = module_gradcheck(n, {transpose(randn<double>({9, 3}), 0, 1).detach()},
                            [&](const std::vector<Tensor<double>>& in) { return n(in[0]); });
  EXPECT_TRUE(r.ok) << r.report;
}

TEST(NnSwiGLUMLP, ForwardGradcheckNames) {
  Generator gen{41, 0};
  nn::SwiGLUMLP<double> m(6, 10, 0.5, gen);
  EXPECT_EQ(state_names(m), (std::vector<std::string>{"gate_proj.weight", "up_proj.weight", "down_proj.weight"}));
  EXPECT_EQ(m.gate_proj.weight.shape(), (Shape{10, 6}));
  EXPECT_EQ(m.up_proj.weight.shape(), (Shape{10, 6}));
  EXPECT_EQ(m.down_proj.weight.shape(), (Shape{6, 10}));

  const Tensor<double> x = randn<double>({2, 3, 6});
  const Vec g = ref_linear(x.to_vector(), m.gate_proj.weight.to_vector(), {}, 6, 6, 10);
  const Vec u = ref_linear(x.to_vector(), m.up_proj.weight.to_vector(), {}, 6, 6, 10);
  Vec hidden(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) hidden[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  const Vec ref = ref_linear(hidden, m.down_proj.weight.to_vector(), {}, 6, 10, 6);
  EXPECT_EQ(m(x).shape(), (Shape{2, 3, 6}));
  EXPECT_LT(relative_error(m(x).to_vector(), ref), 1e-14);

  auto r = module_gradcheck(m, {randn<double>({3, 6})}, [&](const std::vector<Tensor<double>>& in) { return m(in[0]); });
  EXPECT_TRUE(r.ok) << r.report;

  nn::SwiGLUMLP<double> with_bias(4, 5, 0.5, gen, true);
  EXPECT_EQ(state_names(with_bias), (std::vector<std::string>{"gate_proj.weight", "gate_proj.bias", "up_proj.weight",
                                                        "up_proj.bias", "down_proj.weight", "down_proj.bias"}));
  randomize(with_bias, 4);
  r = module_gradcheck(with_bias, {randn<double>({2, 4})},
                       [&](const std::vector<Tensor<double>>& in) { return with_bias(in[0]); });
  EXPECT_TRUE(r.ok) << r.report;
}

TEST(NnAttention, CausalMask) {
  // Two queries at the end of four keys: query 0 sits at key 2, query 1 at key 3.
  EXPECT_EQ(nn::causal_mask(2, 4).to_vector(), (std::vector<bool>{false, false, false, true, false, false, false, false}));
  EXPECT_EQ(nn::causal_mask(3, 3).to_vector(),
            (std::vector<bool>{false, true, true, false, false, true, false, false, false}));
  EXPECT_KILN_ERROR(nn::causal_mask(3, 2), "causal_mask", "q_len 3", "k_len 2");
}

TEST(NnAttention, CausalAttentionMatchesReference) {
  // q [2, 3, Sq, D] against k, v [2, 1, Sk, *] shared by the 3 heads (broadcast), Sq < Sk.
  const std::int64_t B = 2, H = 3, Sq = 3, Sk = 5, D = 4, Dv = 2;
  const double scale = 0.7;
  const Tensor<double> q = randn<double>({B, H, Sq, D}), k = randn<double>({B, 1, Sk, D});
  const Tensor<double> v = transpose(randn<double>({B, 1, Dv, Sk}), -1, -2);  // non-contiguous
  const Tensor<double> out = nn::causal_attention(q, k, v, scale);
  ASSERT_EQ(out.shape(), (Shape{B, H, Sq, Dv}));
  const Vec qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector(), ov = out.to_vector();
  Vec ref;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < Sq; ++i) {
        const std::int64_t last = Sk - Sq + i;
        Vec sc(static_cast<std::size_t>(last + 1));
        double mx = -INFINITY, se = 0.0;
        for (std::int64_t j = 0; j <= last; ++j) {
          double dot = 0.0;
          for (std::int64_t e = 0; e < D; ++e) dot += at(qv, ((b * H + h) * Sq + i) * D + e) * at(kv, (b * Sk + j) * D + e);
          sc[static_cast<std::size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        for (double x : sc) se += std::exp(x - mx);
        for (std::int64_t e = 0; e < Dv; ++e) {
          double o = 0.0;
          for (std::int64_t j = 0; j <= last; ++j)
            o += std::exp(sc[static_cast<std::size_t>(j)] - mx) / se * at(vv, (b * Sk + j) * Dv + e);
          ref.push_back(o);
        }
      }
  EXPECT_LT(relative_error(ov, ref), 1e-14);

  EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& x) { return nn::causal_attention(x[0], x[1], x[2], scale); },
                   {randn<double>({2, 3, 4}), randn<double>({2, 5, 4}), randn<double>({2, 5, 3})});
  EXPECT_KILN_ERROR(nn::causal_attention(q, randn<double>({B, 1, Sk, D + 1}), v, scale), "causal_attention",
                    "[2, 1, 5, 5]");
}
