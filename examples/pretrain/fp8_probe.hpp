// pretrain --fp8-probe: where FP8 training's gradients part from the model's own precision, at the
// current weights. One step's gradients (the same micro-batches) are computed twice, with every
// linear in the model's dtype and with the FP8 linears of --fp8 (--fp8-keep and --fp8-gemms
// respected), and their difference is printed per kind of parameter: the layers' index and the
// routed experts' index are folded out of the name ("self_attn.q_a_proj.weight",
// "mlp.experts.*.down_proj.weight"), so a line sums over layers (and experts), and "(all)" over
// the model:
//   |dg|/|g| = ||g_fp8 − g|| / ||g||   the relative error of the FP8 step's gradient
//   cos      = <g_fp8, g> / (||g_fp8|| ||g||)
//   |du|/|u| = the same for AdamW's per-coordinate normalised step u = g / (sqrt(v̂) + eps), with
//              the optimizer's current second moment v̂ (bias-corrected; after at least one step)
//   sign     = the share of coordinates whose gradient changes sign under FP8
// The last two see what the first cannot: Adam divides each coordinate by its own scale, so an
// error that is small against the gradient's norm (carried by its large coordinates) can still
// redirect the many small ones, whose steps are as large as the rest.
// At initialization FP8's error is a few percent (tests/nn/test_fp8_training.cpp); a kind whose
// error grows with training is where FP8 costs quality (docs/fp8-gemm.md). Some of the difference
// is routing: a token whose router scores nearly tie may choose other experts under FP8, which
// moves those experts' gradients by O(1).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <kiln/nn/fp8_training.hpp>
#include <kiln/ops/copy.hpp>
#include <kiln/train/trainer.hpp>

namespace example {

// "model.layers.3.mlp.experts.5.up_proj.weight" -> "mlp.experts.*.up_proj.weight"; names outside
// the layers ("model.embed_tokens.weight", "lm_head.weight") stay as they are.
inline std::string parameter_kind(const std::string& name) {
  std::string kind = name;
  const std::string layers = "model.layers.";
  if (kind.rfind(layers, 0) == 0) {
    const std::size_t dot = kind.find('.', layers.size());
    if (dot != std::string::npos) kind = kind.substr(dot + 1);
  }
  const std::string experts = "experts.";
  for (std::size_t at = kind.find(experts); at != std::string::npos; at = kind.find(experts, at + 1)) {
    const std::size_t begin = at + experts.size(), end = kind.find('.', begin);
    if (end != std::string::npos && end > begin && kind.find_first_not_of("0123456789", begin) == end)
      kind.replace(begin, end - begin, "*");
  }
  return kind;
}

struct GradientDifference {
  double diff2 = 0, ref2 = 0, fp82 = 0, dot = 0;  // Σ (g_fp8 − g)², Σ g², Σ g_fp8², Σ g_fp8·g
  double udiff2 = 0, uref2 = 0;                   // the same two sums for Adam's normalised steps
  std::int64_t flips = 0, count = 0;              // coordinates whose sign differs, coordinates

  // g, f: the reference and FP8 gradients; v: the optimizer's bias-corrected second moment (empty:
  // none yet), eps its epsilon.
  void add(const std::vector<double>& g, const std::vector<double>& f, const std::vector<double>& v, double eps) {
    for (std::size_t i = 0; i < g.size(); ++i) {
      diff2 += (f[i] - g[i]) * (f[i] - g[i]);
      ref2 += g[i] * g[i];
      fp82 += f[i] * f[i];
      dot += f[i] * g[i];
      flips += ((f[i] > 0) - (f[i] < 0)) != ((g[i] > 0) - (g[i] < 0)) ? 1 : 0;  // signs -1, 0, 1
      if (!v.empty()) {
        const double d = 1.0 / (std::sqrt(v[i]) + eps);
        udiff2 += (f[i] - g[i]) * (f[i] - g[i]) * d * d;
        uref2 += g[i] * g[i] * d * d;
      }
    }
    count += static_cast<std::int64_t>(g.size());
  }
  void add(const GradientDifference& o) {
    diff2 += o.diff2, ref2 += o.ref2, fp82 += o.fp82, dot += o.dot, udiff2 += o.udiff2, uref2 += o.uref2;
    flips += o.flips, count += o.count;
  }
  double relative() const { return ref2 > 0 ? std::sqrt(diff2 / ref2) : 0.0; }
  double cosine() const { return ref2 > 0 && fp82 > 0 ? dot / std::sqrt(ref2 * fp82) : 0.0; }
  double update_relative() const { return uref2 > 0 ? std::sqrt(udiff2 / uref2) : 0.0; }
  double sign_flips() const { return count > 0 ? static_cast<double>(flips) / static_cast<double>(count) : 0.0; }
};

// Every parameter's gradient as float64 values on the host, by name.
template <class Model>
std::map<std::string, std::vector<double>> gradients_by_name(const Model& model) {
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, p] : model.named_parameters()) {
    const auto g = p.grad();
    out[name] = g.defined() ? kiln::cast<double>(g.detach()).to_vector()
                            : std::vector<double>(static_cast<std::size_t>(p.numel()), 0.0);
  }
  return out;
}

// Runs the probe on the micro-batches from `first_batch` and prints a table; leaves the model's
// linears in the mode they had (FP8 when `fp8_trained`) and its gradients zero.
template <class T, class Model>
void run_fp8_probe(Model& model, kiln::train::Trainer<Model>& trainer, std::int64_t first_batch, bool fp8_trained,
                   const kiln::nn::Fp8LinearOptions& options, const std::function<bool(const std::string&)>& keep) {
  kiln::nn::clear_fp8_linears(model);
  const double loss = trainer.compute_gradients(first_batch).loss;
  const auto reference = gradients_by_name(model);
  kiln::nn::use_fp8_linears(model, options, keep);
  const double fp8_loss = trainer.compute_gradients(first_batch).loss;
  const auto fp8 = gradients_by_name(model);
  if (!fp8_trained) kiln::nn::clear_fp8_linears(model);
  model.zero_grad();

  // AdamW's second moments, bias-corrected: the optimizer holds model.parameters(), i.e.
  // named_parameters() in order.
  std::map<std::string, std::vector<double>> second_moment;
  const auto state = trainer.optimizer().state();
  if (state.step > 0) {
    const double correction = 1.0 - std::pow(trainer.optimizer().options().beta2, static_cast<double>(state.step));
    const auto named = model.named_parameters();
    for (std::size_t i = 0; i < named.size() && i < state.v.size(); ++i) {
      std::vector<double> v = kiln::cast<double>(state.v[i]).to_vector();
      for (double& x : v) x /= correction;
      second_moment[named[i].first] = std::move(v);
    }
  }
  const double eps = trainer.optimizer().options().eps;

  std::map<std::string, GradientDifference> kinds;
  GradientDifference all;
  for (const auto& [name, g] : reference) {
    GradientDifference d;
    const auto v = second_moment.find(name);
    d.add(g, fp8.at(name), v == second_moment.end() ? std::vector<double>() : v->second, eps);
    kinds[parameter_kind(name)].add(d);
    all.add(d);
  }
  std::printf("fp8 probe at step %lld (micro-batches from %lld): loss %.5f in %s, %.5f with FP8 GEMMs\n",
              static_cast<long long>(trainer.steps_done()), static_cast<long long>(first_batch), loss,
              kiln::dtype_name<T>, fp8_loss);
  std::printf("fp8 probe %-44s %10s %8s %11s %10s %8s\n", "parameter kind", "|dg|/|g|", "cos", "|g|", "|du|/|u|",
              "sign");
  auto row = [](const std::string& kind, const GradientDifference& d) {
    std::printf("fp8 probe %-44s %10.4f %8.4f %11.4e %10.4f %8.4f\n", kind.c_str(), d.relative(), d.cosine(),
                std::sqrt(d.ref2), d.update_relative(), d.sign_flips());
  };
  for (const auto& [kind, d] : kinds) row(kind, d);
  row("(all)", all);
}

}  // namespace example
