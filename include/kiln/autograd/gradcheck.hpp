// gradcheck: compares the gradients autograd computes with central finite differences, in double.
//
// The op's output y = f(x_1..x_n) is reduced to a scalar L = sum(y * w) with a fixed random w,
// so one backward pass gives every dL/dx analytically; each input element is then perturbed by
// ±eps and (L+ - L-) / 2eps is the numeric derivative. A wrong derivative shows up for almost
// every w, so this checks the whole Jacobian at the cost of one finite difference per input
// element. Central differences have O(eps^2) truncation error; eps = 1e-6 in double leaves
// about 1e-10 relative rounding error, far below the tolerances.
#pragma once

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kiln/core/random.hpp"
#include "kiln/core/tensor.hpp"
#include "kiln/ops/factory.hpp"

namespace kiln {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  std::uint64_t seed = 1234;  // for the projection weights w
  // > 0: of an input with more elements, check only about this many, evenly spread (every
  // ceil(numel / n)-th element). Each checked element costs two evaluations of f, so a whole model
  // costs thousands; tests under the sanitizers (-O0, tens of times slower) sample instead.
  std::int64_t max_elements_per_input = 0;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0.0;
  std::string report;  // the first mismatches, "input i element j: analytic a, numeric n"
};

template <class F>
GradcheckResult gradcheck(F&& f, std::vector<Tensor<double>> inputs, const GradcheckOptions& options = {}) {
  GradcheckResult result;
  std::vector<Tensor<double>> leaves;
  for (auto& x : inputs) {
    check(x.device().is_cpu(), "gradcheck", "inputs must be CPU tensors");
    for (std::size_t d = 0; d < x.shape().size(); ++d)
      check(x.shape()[d] <= 1 || x.strides()[d] != 0, "gradcheck",
            "input of shape ", x.shape(), " has a broadcast (stride 0) dim: its elements alias");
    leaves.push_back(x.detach().requires_grad_());
  }

  const Tensor<double> y = f(leaves);
  Generator gen{options.seed, 0};
  const Tensor<double> w = randn<double>(y.shape(), 0.0, 1.0, Device::cpu(), gen);
  if (y.requires_grad()) y.backward(w);

  auto loss = [&]() {
    NoGradGuard no_grad;
    const std::vector<double> yv = f(leaves).to_vector(), wv = w.to_vector();
    double l = 0.0;
    for (std::size_t k = 0; k < yv.size(); ++k) l += yv[k] * wv[k];
    return l;
  };

  std::ostringstream report;
  int mismatches = 0;
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    const Tensor<double>& x = leaves[i];
    const std::vector<double> analytic =
        x.grad().defined() ? x.grad().to_vector() : std::vector<double>(static_cast<std::size_t>(x.numel()), 0.0);
    const std::int64_t n = options.max_elements_per_input;
    const std::int64_t every = n > 0 && x.numel() > n ? (x.numel() + n - 1) / n : 1;
    for (std::int64_t j = 0; j < x.numel(); j += every) {
      // Element j in row-major order, through x's strides.
      std::int64_t off = 0;
      for (std::int64_t d = static_cast<std::int64_t>(x.shape().size()) - 1, rest = j; d >= 0; --d) {
        const auto du = static_cast<std::size_t>(d);
        off += (rest % x.shape()[du]) * x.strides()[du];
        rest /= x.shape()[du];
      }
      double* p = x.data() + off;
      const double saved = *p;
      *p = saved + options.eps;
      const double plus = loss();
      *p = saved - options.eps;
      const double minus = loss();
      *p = saved;
      const double numeric = (plus - minus) / (2.0 * options.eps);
      const double a = analytic[static_cast<std::size_t>(j)];
      const double err = std::abs(a - numeric);
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (!(err <= options.atol + options.rtol * std::abs(numeric))) {
        result.ok = false;
        if (mismatches++ < 10)
          report << "input " << i << " (shape " << str(x.shape()) << ") element " << j << ": analytic " << a
                 << ", numeric " << numeric << "\n";
      }
    }
  }
  result.report = report.str();
  return result;
}

}  // namespace kiln
