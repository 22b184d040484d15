// latent_cache_write on the CPU (ops/latent_cache_write.hpp): MLA's new latent rows
// [rms_norm(c) * w | rope(k_pe)] into a paged or contiguous cache, against plain loops in double
// (the GPU's fused kernel is checked against this op in tests/kernels/test_latent_write_cuda.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <kiln/ops/factory.hpp>
#include <kiln/ops/latent_cache_write.hpp>

#include "test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

namespace {

Tensor<std::int64_t> ints(const std::vector<std::int64_t>& v) {
  return Tensor<std::int64_t>::from_vector(v, {static_cast<std::int64_t>(v.size())});
}

}  // namespace

TEST(LatentCacheWrite, MatchesPlainLoopsInDouble) {
  manual_seed(91);
  const std::int64_t r = 6, dr = 4, steps = 2, count = 2, row = r + dr, bt = 3;
  const double eps = 1e-6, theta = 10000.0;
  for (bool paged : {true, false}) {
    SCOPED_TRACE(paged ? "paged" : "contiguous");
    // Paged: 2 sequences of 2 blocks of 3 tokens in a pool of 5; contiguous: [2, 6].
    const Tensor<std::int64_t> table = paged ? Tensor<std::int64_t>::from_vector({4, 1, 0, 3}, {2, 2}) : Tensor<std::int64_t>();
    const Tensor<double> cache0 = paged ? randn<double>({5, bt, 1, row}) : randn<double>({2, 6, 1, row});
    const Tensor<double> wide = randn<double>({count, steps, row + 5});  // kv_a: columns 2 .. 2 + row
    const Tensor<double> x = narrow(wide, -1, 2, row);
    const Tensor<double> w = rand<double>({r}, 0.5, 1.5);
    const std::vector<std::int64_t> slots{1, 0}, positions{2, 4};  // sequence 1 at 2, 3 (across blocks); 0 at 4, 5
    const Tensor<std::int64_t> pos2 = Tensor<std::int64_t>::from_vector({2, 3, 4, 5}, {count, steps});
    Tensor<double> cache = clone(cache0);
    latent_cache_write(cache, table, ints(slots), ints(positions), x, w, eps, rope_tables<double>(pos2, dr));

    std::vector<double> want = cache0.to_vector();
    const std::vector<double> xv = contiguous(x).to_vector(), wv = w.to_vector();
    for (std::int64_t a = 0; a < count; ++a)
      for (std::int64_t s = 0; s < steps; ++s) {
        const double* xr = xv.data() + (a * steps + s) * row;
        const std::int64_t slot = slots[static_cast<std::size_t>(a)], p = positions[static_cast<std::size_t>(a)] + s;
        const std::int64_t at = paged ? table.to_vector()[static_cast<std::size_t>(slot * 2 + p / bt)] * bt + p % bt
                                      : slot * 6 + p;
        double squares = 0;
        for (std::int64_t i = 0; i < r; ++i) squares += xr[i] * xr[i];
        const double rs = 1.0 / std::sqrt(squares / static_cast<double>(r) + eps);
        double* out = want.data() + at * row;
        for (std::int64_t i = 0; i < r; ++i) out[i] = xr[i] * rs * wv[static_cast<std::size_t>(i)];
        for (std::int64_t i = 0; i < dr / 2; ++i) {
          const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dr));
          const double x0 = xr[r + 2 * i], x1 = xr[r + 2 * i + 1];
          out[r + 2 * i] = x0 * std::cos(angle) - x1 * std::sin(angle);
          out[r + 2 * i + 1] = x0 * std::sin(angle) + x1 * std::cos(angle);
        }
      }
    EXPECT_LE(relative_error(cache.to_vector(), want).max_abs, 1e-14);
  }
}

TEST(LatentCacheWrite, Errors) {
  const Tensor<float> cache = zeros<float>({4, 3, 1, 10});
  const Tensor<std::int64_t> table = Tensor<std::int64_t>::from_vector({0, 1, 2, 3}, {2, 2});
  const Tensor<float> x = randn<float>({2, 1, 10}), w = ones<float>({6});
  const auto tables = rope_tables<float>(zeros<std::int64_t>({2, 1}), 4);
  EXPECT_KILN_ERROR(latent_cache_write(cache, table, ints({0, 1}), ints({0, 0}), x, ones<float>({10}), 1e-6, tables),
                    "latent_cache_write", "[2, 1, 10]", "[10]");
  EXPECT_KILN_ERROR(latent_cache_write(zeros<float>({4, 3, 1, 12}), table, ints({0, 1}), ints({0, 0}), x, w, 1e-6, tables),
                    "latent_cache_write", "[4, 3, 1, 12]");
  EXPECT_KILN_ERROR(latent_cache_write(cache, table, ints({0, 1}), ints({0, 0}), x, w, 1e-6,
                                       rope_tables<float>(zeros<std::int64_t>({2, 2}), 4)),
                    "latent_cache_write", "[2, 2, 2]", "[2, 1, 2]");
  EXPECT_KILN_ERROR(latent_cache_write(cache, table, ints({0, 5}), ints({0, 0}), x, w, 1e-6, tables), "slot 5");
}
