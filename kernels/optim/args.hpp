// Arguments of the optimizer kernels (kernels/optim/adamw.cuh, kernels/optim/grad_norm.cuh;
// front-ends optim/adamw.hpp and optim/clip.hpp, whose CPU loops are the references).
//
// These kernels work on a list of tensors in one launch (kernels/optim/multi_tensor.cuh). The list
// travels as a pointer to an array of descriptors in HOST memory, owned by the caller and read only
// during the launcher call (the launcher uploads what the kernel needs before it returns). Every
// buffer is contiguous and on args.launch.device; the tensors of one call share one dtype.
#pragma once

#include <cstdint>

#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/math/adamw.hpp"

namespace kiln::kernels {

// One parameter of the AdamW step: numel elements in each buffer.
struct AdamWTensorArgs {
  void* p = nullptr;        // the parameter, of AdamWArgs::dtype
  const void* g = nullptr;  // its gradient, of the same dtype
  void* m = nullptr;        // first moment: double for double parameters, else float
  void* v = nullptr;        // second moment, as m
  float* master = nullptr;  // the FP32 master copy (AdamWArgs::master_weights), else null
  std::int64_t numel = 0;   // empty tensors are skipped
};

// Every listed parameter updated by optim::AdamWStep (math/adamw.hpp) in one launch: with master
// weights the update reads and writes the master copy and p becomes its rounded copy.
struct AdamWArgs {
  static constexpr const char* kernel = "AdamW step";
  static constexpr const char* header = "kiln/kernels/optim/adamw.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;                 // of every p and g: f32, f64, bf16 or f16
  const AdamWTensorArgs* tensors = nullptr;  // host array of `count` parameters
  int count = 0;
  bool master_weights = false;              // every parameter has a master copy (bf16/f16 only)
  optim::AdamWStep step;                    // this step's constants
};

// One gradient of the gradient-norm kernels: numel contiguous elements.
struct GradTensorArgs {
  void* g = nullptr;
  std::int64_t numel = 0;  // empty tensors are skipped
};

// out[0] = the sum over every element of every listed gradient of g^2, in double (deterministic:
// fixed chunks, partial sums added in a fixed order).
struct GradSumSquaresArgs {
  static constexpr const char* kernel = "clip_grad_norm sum_squares";
  static constexpr const char* header = "kiln/kernels/optim/grad_norm.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;                 // of every gradient: f32, f64, bf16 or f16
  const GradTensorArgs* grads = nullptr;     // host array of `count` gradients
  int count = 0;
  double* out = nullptr;                    // [1] on the device; 0 when every gradient is empty
};

// g = g * scale in place for every listed gradient (the product in double, rounded once to g's type).
struct GradScaleArgs {
  static constexpr const char* kernel = "clip_grad_norm scale";
  static constexpr const char* header = "kiln/kernels/optim/grad_norm.cuh";
  DeviceLaunch launch;
  DType dtype = DType::f32;                 // of every gradient: f32, f64, bf16 or f16
  const GradTensorArgs* grads = nullptr;     // host array of `count` gradients
  int count = 0;
  double scale = 1.0;
};

}  // namespace kiln::kernels
