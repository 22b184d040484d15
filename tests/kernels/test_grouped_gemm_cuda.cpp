// The grouped GEMM kernels (kernels/grouped_gemm/) against float64 products of the same bf16/fp16
// inputs: forward (y = x·W_gᵀ), dgrad (dx = dy·W_g) and wgrad (dW_g = dy_gᵀ·x_g) through
// grouped_linear and its backward, with ragged groups (empty ones, groups of one row, one group
// holding every row, sizes that are not multiples of the 128-row tile), N and K from 8 to 1024.
// Outputs are poisoned first. Tolerance: the result is rounded once to the 16-bit type (2^-8
// relative for bf16, 2^-11 for fp16) from a float accumulation whose error is far smaller; the
// error is measured relative to max(|value|, sqrt(terms)), the size of a sum of that many products
// of unit normals, so near-zero sums are judged by their absolute error.
#include <cmath>

#include "cuda_test_util.hpp"
#include "kiln/ops/grouped_linear.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

double worst_error(const std::vector<double>& got, const std::vector<double>& want, double scale) {
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got[i] - want[i]) / std::max(std::abs(want[i]), scale));
  return worst;
}

template <class T>
std::vector<double> as_doubles(const Tensor<T>& t) {
  std::vector<double> out;
  for (const T v : on_cpu(t).to_vector()) out.push_back(static_cast<double>(v));
  return out;
}

template <class T>
void check_grouped(const std::vector<std::int64_t>& sizes, std::int64_t N, std::int64_t K) {
  std::vector<std::int64_t> off{0};
  std::int64_t largest = 1;
  for (auto s : sizes) {
    off.push_back(off.back() + s);
    largest = std::max(largest, s);
  }
  const std::int64_t R = off.back(), G = static_cast<std::int64_t>(sizes.size());
  SCOPED_TRACE(::testing::Message() << str(dtype_of<T>) << " G " << G << " R " << R << " N " << N << " K " << K);
  const Tensor<std::int64_t> offsets = Tensor<std::int64_t>::from_vector(off, {G + 1});
  const Tensor<T> x = cast<T>(randn<float>({R, K})), w = cast<T>(randn<float>({G, N, K}));
  const Tensor<T> dy = cast<T>(randn<float>({R, N}));

  // float64 reference: the op on the CPU in double from the same rounded inputs.
  const Tensor<double> xd = cast<double>(x).requires_grad_(), wd = cast<double>(w).requires_grad_();
  const Tensor<double> yd = grouped_linear(xd, wd, offsets);
  yd.backward(cast<double>(dy));

  poison_cached_memory();
  const Tensor<T> xg = on_gpu(x).requires_grad_(), wg = on_gpu(w).requires_grad_();
  const Tensor<T> yg = grouped_linear(xg, wg, on_gpu(offsets));
  yg.backward(on_gpu(dy));

  const double tol = std::is_same_v<T, bf16> ? 1.0 / 256 : 1.0 / 2048;
  EXPECT_LE(worst_error(as_doubles(yg), yd.to_vector(), std::sqrt(static_cast<double>(K))), tol) << "forward";
  EXPECT_LE(worst_error(as_doubles(xg.grad()), xd.grad().to_vector(), std::sqrt(static_cast<double>(N))), tol)
      << "dgrad";
  EXPECT_LE(worst_error(as_doubles(wg.grad()), wd.grad().to_vector(), std::sqrt(static_cast<double>(largest))), tol)
      << "wgrad";
}

}  // namespace

TEST(GroupedGemmCuda, EqualsFloat64) {
  KILN_REQUIRE_GPU();
  // Ragged groups: empty first, middle and last groups, single rows, partial tiles, more than
  // one row tile, one group with everything.
  const std::vector<std::vector<std::int64_t>> splits{
      {1}, {300}, {0, 1, 0, 129, 7, 0}, {4097, 0}, {0, 0, 0, 513}, {64, 128, 192, 1, 255, 256, 0, 300}};
  for (const auto& s : splits) {
    check_grouped<bf16>(s, 64, 96);
    check_grouped<bf16>(s, 8, 40);
  }
  check_grouped<bf16>({1000, 3000, 0, 2000}, 1024, 768);   // kiln's big config, GEMM1
  check_grouped<bf16>({1000, 3000, 0, 2000}, 768, 512);    // and GEMM2
  check_grouped<fp16>({5, 700, 0, 130}, 96, 1000);
  // 40 groups: the scheduler's prefix sum spans two groups a lane.
  std::vector<std::int64_t> many;
  for (int g = 0; g < 40; ++g) many.push_back((g * 37) % 150);
  check_grouped<bf16>(many, 128, 64);
}

TEST(GroupedGemmCuda, RejectsWhatItCannotRun) {
  KILN_REQUIRE_GPU();
  const Tensor<std::int64_t> off = on_gpu(Tensor<std::int64_t>::from_vector({0, 3, 5}, {3}));
  EXPECT_THROW(grouped_linear(on_gpu(randn<float>({5, 16})), on_gpu(randn<float>({2, 8, 16})), off), Error);  // float
  EXPECT_THROW(grouped_linear(on_gpu(randn<bf16>({5, 12})), on_gpu(randn<bf16>({2, 8, 12})), off), Error);    // K 12
  EXPECT_THROW(grouped_linear(on_gpu(randn<bf16>({5, 16})), on_gpu(randn<bf16>({2, 8, 16})),
                              Tensor<std::int64_t>::from_vector({0, 3, 5}, {3})),
               Error);  // offsets on the host
}
