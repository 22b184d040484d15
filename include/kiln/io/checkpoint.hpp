// Model and training checkpoints.
//
// A model directory is what transformers' save_pretrained writes and from_pretrained reads:
//   config.json        the config (io/config.hpp), with torch_dtype
//   model.safetensors  every parameter and buffer under its nn::Module::state() name (Hugging
//                      Face names), metadata {"format": "pt"} as transformers expects
// A training checkpoint adds what resuming needs, so that a resumed run continues bit for bit:
//   optimizer.safetensors  AdamW's moments "<param name>.exp_avg" / "<param name>.exp_avg_sq"
//                          (PyTorch's names for m and v), the FP32 master weights of bf16/fp16
//                          parameters "<param name>.master", the step count in the metadata
//   trainer.json           step, RNG state (seed, offset), data position, lr, lr schedule state
//                          and any extra fields the trainer keeps
// Each directory is written as a unit (io/file.hpp: "<dir>.tmp", then swapped in), so a crash
// leaves the previous checkpoint complete.
//
// Loading copies into the model's existing tensors (in place, on whatever device they live, so
// optimizers holding them stay valid), after checking the whole file first: names in the file
// that the model lacks (unknown), names the model has and the file lacks (missing) and shape
// differences are errors listing every offending name (and both shapes), and nothing is changed.
// A file dtype that differs from the model's converts by default (a bf16 checkpoint into a float
// model; floating values round to nearest even), see LoadOptions; training checkpoints load with
// exact dtypes only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "kiln/core/random.hpp"
#include "kiln/io/config.hpp"
#include "kiln/io/safetensors.hpp"
#include "kiln/nn/module.hpp"
#include "kiln/optim/adamw.hpp"

namespace kiln::io {

inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kTrainerFile = "trainer.json";

struct LoadOptions {
  // true: a tensor stored in another dtype converts to the model's (Conversion::convert: floating
  // from floating or integer; integers range-checked). false: every dtype must match exactly.
  bool allow_dtype_conversion = true;
  // true: model tensors absent from the file keep their current values (listed in the report).
  bool allow_missing = false;
  // true: file tensors the model does not have are skipped (listed in the report).
  bool allow_unknown = false;
};

struct LoadReport {
  std::vector<std::string> loaded, missing, unknown;
};

namespace detail {

inline std::string join_names(const std::vector<std::string>& names, std::size_t limit = 20) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += str(", ... and ", names.size() - limit, " more");
  return out;
}

inline std::string join_path(const std::string& dir, const char* file) {
  return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

// A module's tensor slots by name, in state() order.
template <class T>
std::vector<std::pair<std::string, Tensor<T>*>> slots_of(const nn::Module<T>& model) {
  std::vector<std::pair<std::string, Tensor<T>*>> out;
  model.visit("", [&](const std::string& name, Tensor<T>* t, bool) { out.emplace_back(name, t); });
  return out;
}

// Checks that `file` fits `slots` (see LoadOptions) and returns what will load; throws before
// anything changes.
template <class T>
LoadReport plan_load(const Safetensors& file, const std::vector<std::pair<std::string, Tensor<T>*>>& slots,
                     const LoadOptions& options, const char* op) {
  LoadReport report;
  std::set<std::string> model_names;
  std::vector<std::string> mismatches;
  for (const auto& [name, slot] : slots) {
    model_names.insert(name);
    if (!file.contains(name)) {
      report.missing.push_back(name);
      continue;
    }
    const SafetensorsEntry& e = file.entry(name);
    if (slot->defined() && e.shape != slot->shape())
      mismatches.push_back(str("'", name, "': file has ", e.shape, ", model has ", slot->shape()));
    if (e.dtype != dtype_of<T> && (!options.allow_dtype_conversion || !convertible_from<T>(e.dtype)))
      mismatches.push_back(str("'", name, "': file dtype ", safetensors_dtype_name(e.dtype), ", model dtype ",
                               safetensors_dtype_name(dtype_of<T>),
                               options.allow_dtype_conversion ? " (no lossless conversion)" : " (conversion not allowed)"));
    report.loaded.push_back(name);
  }
  for (const auto& name : file.names())
    if (!model_names.count(name)) report.unknown.push_back(name);
  if (!report.unknown.empty() && !options.allow_unknown)
    fail(op, file.path(), ": ", report.unknown.size(), " tensor(s) in the file are not in the model: ",
         join_names(report.unknown));
  if (!report.missing.empty() && !options.allow_missing)
    fail(op, file.path(), ": ", report.missing.size(), " model tensor(s) are missing from the file: ",
         join_names(report.missing));
  if (!mismatches.empty())
    fail(op, file.path(), ": ", mismatches.size(), " tensor(s) do not fit the model: ", join_names(mismatches));
  return report;
}

// Copies a CPU tensor's elements into `dst` in place (any device), or replaces an undefined or
// non-contiguous slot.
template <class T>
void assign_into(Tensor<T>* dst, const Tensor<T>& src, bool trainable) {
  if (dst->defined() && dst->is_contiguous()) {
    copy_bytes(dst->data(), dst->device(), src.data(), src.device(), static_cast<std::size_t>(src.numel()) * sizeof(T));
    return;
  }
  Tensor<T> moved = dst->defined() ? kiln::to(src, dst->device()) : src;
  if (trainable && is_floating<T>) moved.requires_grad_();
  *dst = moved;
}

}  // namespace detail

// ---- model state -------------------------------------------------------------------------------

// model.state() as tensors to write.
template <class T>
std::vector<NamedTensor> state_tensors(const nn::Module<T>& model) {
  std::vector<NamedTensor> out;
  for (auto& [name, t] : model.state()) out.emplace_back(name, t);
  return out;
}

// Writes model.state() to a safetensors file (atomically).
template <class T>
void save_state(const std::string& path, const nn::Module<T>& model, const Metadata& metadata = {{"format", "pt"}}) {
  save_safetensors(path, state_tensors(model), metadata);
}

// Loads tensors from `file` into model's parameters and buffers (see the file comment).
template <class T>
LoadReport load_state(const Safetensors& file, nn::Module<T>& model, const LoadOptions& options = {}) {
  const auto slots = detail::slots_of(model);
  LoadReport report = detail::plan_load(file, slots, options, "load_state");
  std::map<std::string, Tensor<T>*> by_name;
  std::map<std::string, bool> trainable;
  model.visit("", [&](const std::string& name, Tensor<T>* t, bool tr) {
    by_name[name] = t;
    trainable[name] = tr;
  });
  const Conversion conversion = options.allow_dtype_conversion ? Conversion::convert : Conversion::exact;
  NoGradGuard no_grad;
  for (const auto& name : report.loaded)
    detail::assign_into(by_name.at(name), file.get<T>(name, conversion), trainable.at(name));
  return report;
}

template <class T>
LoadReport load_state(const std::string& path, nn::Module<T>& model, const LoadOptions& options = {}) {
  return load_state(Safetensors::load(path), model, options);
}

// ---- model directories (config.json + model.safetensors) ----------------------------------------

// Writes `dir` as a Hugging Face model directory, atomically as a whole.
template <class T, class Config>
void save_model(const std::string& dir, const nn::Module<T>& model, const Config& config) {
  write_directory_atomically(dir, [&](const std::string& tmp) {
    save_state(detail::join_path(tmp, kModelFile), model);
    save_config(detail::join_path(tmp, kConfigFile), config, dtype_name<T>);
  }, "save_model");
}

// Loads the weights of a model directory into `model` (built from load_model_config(dir)).
template <class T>
LoadReport load_model(const std::string& dir, nn::Module<T>& model, const LoadOptions& options = {}) {
  return load_state(detail::join_path(committed_directory(dir), kModelFile), model, options);
}

template <class Config>
Config load_model_config(const std::string& dir) {
  return load_config<Config>(detail::join_path(committed_directory(dir), kConfigFile));
}

// The "model_type" a model directory's config.json names ("deepseek_v3", "llama"): which model
// and config to build before load_model_config / load_model.
inline std::string load_model_type(const std::string& dir) {
  return config_model_type(detail::join_path(committed_directory(dir), kConfigFile));
}

// ---- training checkpoints -----------------------------------------------------------------------

struct TrainerState {
  std::int64_t step = 0;
  Generator rng;                      // the training RNG (seed and offset)
  std::int64_t data_position = 0;     // where the data stream resumes, in the trainer's unit
  double lr = 0.0;                    // the lr of the last step
  json lr_schedule = json::object();  // the schedule's state and settings (warmup, total steps, ...)
  json extra = json::object();        // anything else the trainer needs to resume
};

inline ordered_json trainer_state_to_json(const TrainerState& s) {
  ordered_json j;
  j["kiln_checkpoint_version"] = 1;
  j["step"] = s.step;
  j["rng"] = {{"seed", s.rng.seed}, {"offset", s.rng.offset}};
  j["data_position"] = s.data_position;
  j["lr"] = s.lr;
  j["lr_schedule"] = ordered_json(s.lr_schedule);
  j["extra"] = ordered_json(s.extra);
  return j;
}

inline TrainerState trainer_state_from_json(const json& j, const std::string& source) {
  constexpr const char* op = "trainer_state";
  auto field = [&](const json& obj, const char* key, const char* where) -> const json& {
    if (!obj.is_object() || !obj.contains(key)) fail(op, source, ": missing \"", where, key, "\"");
    return obj[key];
  };
  auto count = [&](const json& v, const char* key) {
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      fail(op, source, ": \"", key, "\" must be a non-negative integer, got ", describe_json(v));
    return v.get<std::int64_t>();
  };
  auto u64 = [&](const json& v, const char* key) {
    if (!v.is_number_unsigned()) fail(op, source, ": \"rng.", key, "\" must be a non-negative integer, got ", describe_json(v));
    return v.get<std::uint64_t>();
  };
  if (!j.is_object()) fail(op, source, ": expected a JSON object, got ", j.type_name());
  const json& version = field(j, "kiln_checkpoint_version", "");
  if (version != 1) fail(op, source, ": unsupported kiln_checkpoint_version ", describe_json(version), " (this kiln reads 1)");
  TrainerState s;
  s.step = count(field(j, "step", ""), "step");
  const json& rng = field(j, "rng", "");
  s.rng.seed = u64(field(rng, "seed", "rng."), "seed");
  s.rng.offset = u64(field(rng, "offset", "rng."), "offset");
  s.data_position = count(field(j, "data_position", ""), "data_position");
  const json& lr = field(j, "lr", "");
  if (!lr.is_number()) fail(op, source, ": \"lr\" must be a number, got ", describe_json(lr));
  s.lr = lr.get<double>();
  if (j.contains("lr_schedule")) s.lr_schedule = j["lr_schedule"];
  if (j.contains("extra")) s.extra = j["extra"];
  return s;
}

namespace detail {

// The model's name of each optimizer parameter (matched by storage), for optimizer.safetensors.
template <class T>
std::vector<std::string> optimizer_param_names(const nn::Module<T>& model, const optim::AdamW<T>& opt, const char* op) {
  std::map<const void*, std::string> names;
  for (auto& [name, t] : model.named_parameters())
    if (t.defined()) names.emplace(static_cast<const void*>(t.data()), name);
  std::vector<std::string> out;
  for (const auto& p : opt.params()) {
    auto it = names.find(static_cast<const void*>(p.data()));
    if (it == names.end()) fail(op, "an optimizer parameter of shape ", p.shape(), " is not a parameter of the model");
    out.push_back(it->second);
  }
  return out;
}

}  // namespace detail

// Writes a training checkpoint directory (config.json, model.safetensors, optimizer.safetensors,
// trainer.json) atomically as a whole. `opt` must optimize parameters of `model`.
template <class T, class Config>
void save_training_checkpoint(const std::string& dir, const nn::Module<T>& model, const Config& config,
                              const optim::AdamW<T>& opt, const TrainerState& state) {
  constexpr const char* op = "save_training_checkpoint";
  const std::vector<std::string> names = detail::optimizer_param_names(model, opt, op);
  const auto st = opt.state();
  std::vector<NamedTensor> moments;
  for (std::size_t i = 0; i < names.size(); ++i) {
    moments.emplace_back(names[i] + ".exp_avg", st.m[i]);
    moments.emplace_back(names[i] + ".exp_avg_sq", st.v[i]);
    if (!st.master.empty()) moments.emplace_back(names[i] + ".master", st.master[i]);
  }
  const Metadata metadata = {{"optimizer", "AdamW"}, {"step", std::to_string(st.step)}};
  write_directory_atomically(dir, [&](const std::string& tmp) {
    save_state(detail::join_path(tmp, kModelFile), model);
    save_config(detail::join_path(tmp, kConfigFile), config, dtype_name<T>);
    save_safetensors(detail::join_path(tmp, kOptimizerFile), moments, metadata);
    const std::string trainer_path = detail::join_path(tmp, kTrainerFile);
    write_file_atomically(trainer_path, dump_json(trainer_state_to_json(state), op, trainer_path, 2) + "\n", op);
  }, op);
}

// Restores model weights, optimizer state and returns the trainer state of a checkpoint written
// by save_training_checkpoint. Every file is read and checked before anything changes: the saved
// config.json must describe `config` (the model's) in every field, each differing field listed in
// the error; dtypes must match exactly (a resumed run is bit for bit the uninterrupted one).
template <class T, class Config>
TrainerState load_training_checkpoint(const std::string& dir_in, nn::Module<T>& model, const Config& config,
                                      optim::AdamW<T>& opt) {
  constexpr const char* op = "load_training_checkpoint";
  const std::string dir = committed_directory(dir_in);
  const std::string config_path = detail::join_path(dir, kConfigFile);
  const std::vector<std::string> differences =
      config_differences(load_config<Config>(config_path), config, "checkpoint", "model");
  if (!differences.empty())
    fail(op, config_path, ": the checkpoint's config differs from the model's in ", differences.size(),
         " field(s): ", detail::join_names(differences, differences.size()));
  const std::string trainer_path = detail::join_path(dir, kTrainerFile);
  const TrainerState state = trainer_state_from_json(parse_json(read_text_file(trainer_path, op), op, trainer_path), trainer_path);

  const Safetensors model_file = Safetensors::load(detail::join_path(dir, kModelFile));
  const LoadOptions exact{false, false, false};
  detail::plan_load(model_file, detail::slots_of(model), exact, op);

  const Safetensors opt_file = Safetensors::load(detail::join_path(dir, kOptimizerFile));
  const std::vector<std::string> names = detail::optimizer_param_names(model, opt, op);
  auto step_it = opt_file.metadata().find("step");
  if (step_it == opt_file.metadata().end()) fail(op, opt_file.path(), ": metadata lacks \"step\"");
  std::int64_t step = 0;
  {
    const std::string& text = step_it->second;
    std::size_t used = 0;
    try {
      step = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || step < 0) fail(op, opt_file.path(), ": metadata step \"", text, "\" is not a step count");
  }
  typename optim::AdamW<T>::State st;
  st.step = step;
  const bool has_master = !opt.state().master.empty();
  std::set<std::string> expected;
  // Checks one state tensor of parameter i and reads it with its exact dtype (get throws on any
  // other), before anything changed.
  auto read = [&]<class E>(std::size_t i, const std::string& suffix, std::vector<Tensor<E>>& into) {
    const std::string key = names[i] + suffix;
    expected.insert(key);
    if (!opt_file.contains(key)) fail(op, opt_file.path(), ": missing optimizer state '", key, "'");
    const SafetensorsEntry& e = opt_file.entry(key);
    if (e.shape != opt.params()[i].shape())
      fail(op, opt_file.path(), ": '", key, "' has shape ", e.shape, ", parameter has ", opt.params()[i].shape());
    into.push_back(opt_file.get<E>(key));
  };
  for (std::size_t i = 0; i < names.size(); ++i) {
    read(i, ".exp_avg", st.m);
    read(i, ".exp_avg_sq", st.v);
    if (has_master) read(i, ".master", st.master);
  }
  std::vector<std::string> unknown;
  for (const auto& name : opt_file.names())
    if (!expected.count(name)) unknown.push_back(name);
  if (!unknown.empty())
    fail(op, opt_file.path(), ": ", unknown.size(), " tensor(s) match no optimizer parameter: ", detail::join_names(unknown));

  load_state(model_file, model, exact);
  opt.load_state(st);
  return state;
}

}  // namespace kiln::io
