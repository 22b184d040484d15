// rl/logprobs.hpp: token_logprobs and token_entropy against float64 references computed with
// plain loops, at odd shapes and strides; gradients by finite differences; bad input.
#include <cmath>
#include <limits>

#include <kiln/rl/logprobs.hpp>

#include "test_util.hpp"

using namespace kiln;
using kiln::testing::relative_error;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T& v : t.to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

// log p(token) per [b, t] row of row-major [rows, V] logits at `temperature`, in double; rows
// whose token is `ignore` give 0.
std::vector<double> reference_logprobs(const std::vector<double>& x, std::int64_t V, const std::vector<std::int64_t>& tok,
                                       double temperature, std::int64_t ignore = -100) {
  std::vector<double> out(tok.size(), 0.0);
  for (std::size_t r = 0; r < tok.size(); ++r) {
    if (tok[r] == ignore) continue;
    const double* row = x.data() + r * static_cast<std::size_t>(V);
    double m = -kInf;
    for (std::int64_t v = 0; v < V; ++v) m = std::max(m, row[v] / temperature);
    double s = 0.0;
    for (std::int64_t v = 0; v < V; ++v) s += std::exp(row[v] / temperature - m);
    out[r] = row[tok[r]] / temperature - m - std::log(s);
  }
  return out;
}

// Entropy -sum p log p per row, in double (p = 0 terms contribute 0).
std::vector<double> reference_entropy(const std::vector<double>& x, std::int64_t V, double temperature) {
  const std::size_t rows = x.size() / static_cast<std::size_t>(V);
  std::vector<double> out(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    const double* row = x.data() + r * static_cast<std::size_t>(V);
    double m = -kInf;
    for (std::int64_t v = 0; v < V; ++v) m = std::max(m, row[v] / temperature);
    double s = 0.0;
    for (std::int64_t v = 0; v < V; ++v) s += std::exp(row[v] / temperature - m);
    double h = 0.0;
    for (std::int64_t v = 0; v < V; ++v) {
      const double lp = row[v] / temperature - m - std::log(s);
      if (std::exp(lp) > 0.0) h -= std::exp(lp) * lp;
    }
    out[r] = h;
  }
  return out;
}

}  // namespace

TEST(TokenLogprobs, MatchesDoubleReference) {
  Generator gen{101, 0};
  for (const Shape& s : std::vector<Shape>{{1, 1, 1}, {3, 5, 7}, {2, 9, 1003}, {4, 1, 33}}) {
    for (double temperature : {1.0, 0.6, 1.7}) {
      const Tensor<double> xd = randn<double>(s, 0.0, 3.0, Device::cpu(), gen);
      const Tensor<std::int64_t> tok = randint<std::int64_t>(0, s[2], {s[0], s[1]}, Device::cpu(), gen);
      const auto ref = reference_logprobs(xd.to_vector(), s[2], tok.to_vector(), temperature);
      const Tensor<double> lpd = rl::token_logprobs(xd, tok, temperature);
      EXPECT_EQ(lpd.shape(), (Shape{s[0], s[1]}));
      EXPECT_LE(relative_error(lpd.to_vector(), ref), 1e-13) << str(s) << " T=" << temperature;
      // float: the reference on the float-rounded logits, so only the op's arithmetic is measured.
      const Tensor<float> xf = cast<float>(xd);
      const auto ref_f = reference_logprobs(as_double(xf), s[2], tok.to_vector(), temperature);
      EXPECT_LE(relative_error(as_double(rl::token_logprobs(xf, tok, temperature)), ref_f), 1e-6)
          << str(s) << " T=" << temperature;
    }
  }
}

TEST(TokenLogprobs, NonContiguousLogitsAndTokens) {
  Generator gen{102, 0};
  // [T, B, V] stored, viewed as [B, T, V]; tokens likewise transposed.
  const Tensor<double> stored = randn<double>({7, 3, 11}, 0.0, 2.0, Device::cpu(), gen);
  const Tensor<double> x = transpose(stored, 0, 1);
  const Tensor<std::int64_t> tok = transpose(randint<std::int64_t>(0, 11, {7, 3}, Device::cpu(), gen), 0, 1);
  ASSERT_FALSE(x.is_contiguous());
  const auto ref = reference_logprobs(contiguous(x).to_vector(), 11, tok.to_vector(), 0.8);
  EXPECT_LE(relative_error(rl::token_logprobs(x, tok, 0.8).to_vector(), ref), 1e-13);
  // A vocabulary slice (every other logit) is a strided last dim.
  const Tensor<double> wide = randn<double>({2, 5, 18}, 0.0, 2.0, Device::cpu(), gen);
  const Tensor<double> sliced = slice(wide, 2, 0, 18, 2);
  const Tensor<std::int64_t> tok2 = randint<std::int64_t>(0, 9, {2, 5}, Device::cpu(), gen);
  EXPECT_LE(relative_error(rl::token_logprobs(sliced, tok2).to_vector(),
                           reference_logprobs(contiguous(sliced).to_vector(), 9, tok2.to_vector(), 1.0)),
            1e-13);
}

TEST(TokenLogprobs, LogProbsAreNonPositiveAndNormalised) {
  // For each row, exp(log p(v)) summed over every token v of the vocabulary is 1.
  Generator gen{103, 0};
  const std::int64_t V = 13;
  const Tensor<double> row = randn<double>({1, 1, V}, 0.0, 4.0, Device::cpu(), gen);
  const Tensor<double> x = contiguous(expand(row, {1, V, V}));  // the same row V times
  const Tensor<std::int64_t> every = reshape(arange<std::int64_t>(0.0, static_cast<double>(V)), {1, V});
  const auto lp = rl::token_logprobs(x, every).to_vector();
  double total = 0.0;
  for (double v : lp) {
    EXPECT_LE(v, 0.0);
    total += std::exp(v);
  }
  EXPECT_NEAR(total, 1.0, 1e-14);
}

TEST(TokenLogprobs, IgnoredPositionsGiveZeroAndNoGradient) {
  Generator gen{104, 0};
  Tensor<double> x = randn<double>({2, 4, 6}, 0.0, 1.0, Device::cpu(), gen);
  x.requires_grad_();
  const Tensor<std::int64_t> tok = tensor<std::int64_t>({1, 5, -100, 0, 2, -100, -100, 3}, {2, 4});
  const Tensor<double> lp = rl::token_logprobs(x, tok);
  const auto ref = reference_logprobs(x.detach().to_vector(), 6, tok.to_vector(), 1.0);
  EXPECT_LE(relative_error(lp.detach().to_vector(), ref), 1e-13);
  EXPECT_EQ(lp.at({0, 2}), 0.0);
  sum(lp).backward();
  const Tensor<double> g = x.grad();
  for (auto [b, t] : std::vector<std::pair<int, int>>{{0, 2}, {1, 1}, {1, 2}})
    for (std::int64_t v = 0; v < 6; ++v) EXPECT_EQ(g.at({b, t, v}), 0.0) << b << "," << t;
  // At a counted position the gradient is onehot(token) - softmax: it sums to 0 over the vocabulary.
  double row_sum = 0.0;
  for (std::int64_t v = 0; v < 6; ++v) row_sum += g.at({0, 0, v});
  EXPECT_NEAR(row_sum, 0.0, 1e-15);
  EXPECT_GT(g.at({0, 0, 1}), 0.0);
}

TEST(TokenLogprobs, Gradcheck) {
  Generator gen{105, 0};
  for (double temperature : {1.0, 0.6}) {
    const Tensor<std::int64_t> tok = randint<std::int64_t>(0, 7, {3, 5}, Device::cpu(), gen);
    EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& in) { return rl::token_logprobs(in[0], tok, temperature); },
                     {randn<double>({3, 5, 7}, 0.0, 1.5, Device::cpu(), gen)});
  }
  // Through a non-contiguous view of the leaf.
  const Tensor<std::int64_t> tok = randint<std::int64_t>(0, 5, {4, 3}, Device::cpu(), gen);
  EXPECT_GRADCHECK([&](const std::vector<Tensor<double>>& in) { return rl::token_logprobs(transpose(in[0], 0, 1), tok); },
                   {randn<double>({3, 4, 5}, 0.0, 1.0, Device::cpu(), gen)});
}

TEST(TokenLogprobs, BadInput) {
  const Tensor<float> x = zeros<float>({2, 3, 5});
  EXPECT_KILN_ERROR(rl::token_logprobs(zeros<float>({6, 5}), zeros<std::int64_t>({6})), "token_logprobs", "[B, T, V]",
                    "[6, 5]");
  EXPECT_KILN_ERROR(rl::token_logprobs(x, zeros<std::int64_t>({3, 2})), "token_logprobs", "[2, 3, 5]", "[3, 2]");
  EXPECT_KILN_ERROR(rl::token_logprobs(x, full<std::int64_t>({2, 3}, 5)), "token_logprobs", "out of range", "5 classes");
  EXPECT_KILN_ERROR(rl::token_logprobs(x, zeros<std::int64_t>({2, 3}), 0.0), "token_logprobs", "temperature");
  EXPECT_KILN_ERROR(rl::token_logprobs(x, zeros<std::int64_t>({2, 3}), -1.0), "token_logprobs", "temperature");
  EXPECT_KILN_ERROR(rl::token_logprobs(Tensor<float>(), zeros<std::int64_t>({2, 3})), "token_logprobs", "undefined");
}

TEST(TokenEntropy, MatchesDoubleReferenceForAnyChunking) {
  Generator gen{106, 0};
  for (const Shape& s : std::vector<Shape>{{1, 1, 1}, {3, 5, 7}, {2, 9, 1003}}) {
    const Tensor<double> xd = randn<double>(s, 0.0, 2.5, Device::cpu(), gen);
    const Tensor<float> xf = cast<float>(xd);
    for (double temperature : {1.0, 0.7}) {
      const auto ref = reference_entropy(xd.to_vector(), s[2], temperature);
      const auto ref_f = reference_entropy(as_double(xf), s[2], temperature);
      for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{4}, std::int64_t{7}, std::int64_t{1024}}) {
        const Tensor<double> h = rl::token_entropy(xd, temperature, chunk);
        EXPECT_EQ(h.shape(), (Shape{s[0], s[1]}));
        EXPECT_LE(relative_error(h.to_vector(), ref), 1e-12) << str(s) << " chunk " << chunk;
        EXPECT_LE(relative_error(as_double(rl::token_entropy(xf, temperature, chunk)), ref_f), 1e-5)
            << str(s) << " chunk " << chunk;
      }
    }
  }
}

TEST(TokenEntropy, NonContiguousLogits) {
  Generator gen{107, 0};
  const Tensor<double> x = transpose(randn<double>({6, 5, 9}, 0.0, 2.0, Device::cpu(), gen), 0, 1);  // [5, 6, 9]
  const auto ref = reference_entropy(contiguous(x).to_vector(), 9, 1.0);
  for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{4}, std::int64_t{100}})
    EXPECT_LE(relative_error(rl::token_entropy(x, 1.0, chunk).to_vector(), ref), 1e-12) << chunk;
  // A strided vocabulary (every other logit) flattens over [B, T]; one sequence of a batch too.
  const Tensor<double> sliced = slice(randn<double>({3, 4, 14}, 0.0, 2.0, Device::cpu(), gen), 2, 0, 14, 2);
  EXPECT_LE(relative_error(rl::token_entropy(sliced, 1.0, 5).to_vector(),
                           reference_entropy(contiguous(sliced).to_vector(), 7, 1.0)),
            1e-12);
  const Tensor<double> one = narrow(x, 0, 2, 1);  // [1, 6, 9] with the strides of the transposed view
  EXPECT_LE(relative_error(rl::token_entropy(one, 1.0, 4).to_vector(),
                           reference_entropy(contiguous(one).to_vector(), 9, 1.0)),
            1e-12);
}

TEST(TokenEntropy, KnownValuesMaskedLogitsAndNoGraph) {
  // Uniform over V: log V. One-hot (others -inf): exactly 0. Two equal finite logits among -inf: log 2.
  Tensor<double> x = tensor<double>({0, 0, 0, 0, 5, -kInf, -kInf, -kInf, -kInf, 1, -kInf, 1}, {1, 3, 4});
  x.requires_grad_();
  const Tensor<double> h = rl::token_entropy(x, 1.0, 2);
  EXPECT_FALSE(h.requires_grad());
  EXPECT_NEAR(h.at({0, 0}), std::log(4.0), 1e-15);
  EXPECT_EQ(h.at({0, 1}), 0.0);
  EXPECT_NEAR(h.at({0, 2}), std::log(2.0), 1e-15);
  // Huge logits stay finite (the max is subtracted).
  const Tensor<float> big = tensor<float>({1000, 1000, -1000, 3000}, {2, 1, 2});
  const auto hb = rl::token_entropy(big).to_vector();
  EXPECT_NEAR(hb[0], std::log(2.0), 1e-6);
  EXPECT_EQ(hb[1], 0.0f);
}

TEST(TokenEntropy, BadInput) {
  EXPECT_KILN_ERROR(rl::token_entropy(zeros<float>({4, 5})), "token_entropy", "[B, T, V]", "[4, 5]");
  EXPECT_KILN_ERROR(rl::token_entropy(zeros<float>({1, 4, 5}), 1.0, 0), "token_entropy", "chunk_rows");
  EXPECT_KILN_ERROR(rl::token_entropy(zeros<float>({1, 4, 5}), std::nan("")), "token_entropy", "temperature");
}
