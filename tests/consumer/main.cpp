// Built against the installed kiln package: trains y = 3x - 1 with autograd, prints the fit.
#include <kiln/kiln.hpp>

#include <cmath>
#include <iostream>

int main() {
  auto x = kiln::rand<double>({64, 1}, -1.0, 1.0);
  auto y = x * 3.0 - 1.0;
  auto w = kiln::zeros<double>({1}).requires_grad_();
  auto b = kiln::zeros<double>({1}).requires_grad_();
  for (int step = 0; step < 300; ++step) {
    auto loss = kiln::mean(kiln::pow(x * w + b - y, 2.0));
    w.zero_grad();
    b.zero_grad();
    loss.backward();
    kiln::NoGradGuard no_grad;
    w.data()[0] -= 0.5 * w.grad().item();
    b.data()[0] -= 0.5 * b.grad().item();
  }
  std::cout << "w " << w.item() << " b " << b.item() << "\n";
  return std::abs(w.item() - 3.0) < 1e-3 && std::abs(b.item() + 1.0) < 1e-3 ? 0 : 1;
}
