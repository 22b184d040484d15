// kiln: a header-only C++20 tensor and autograd library. Include this one header.
//
// A translation unit compiled by a plain C++ compiler gets the CPU backend. The CUDA backend comes
// from <kiln/backend/cuda.hpp>, included by at least one file compiled by nvcc.
#pragma once

#include "kiln/core/device.hpp"
#include "kiln/core/device_kernel.hpp"
#include "kiln/core/dtype.hpp"
#include "kiln/core/error.hpp"
#include "kiln/core/kernel_trace.hpp"
#include "kiln/core/print.hpp"
#include "kiln/core/random.hpp"
#include "kiln/core/shape.hpp"
#include "kiln/core/storage.hpp"
#include "kiln/core/tensor.hpp"

#include "kiln/autograd/grad_mode.hpp"
#include "kiln/autograd/node.hpp"

#include "kiln/ops/attention.hpp"
#include "kiln/ops/binary.hpp"
#include "kiln/ops/copy.hpp"
#include "kiln/ops/factory.hpp"
#include "kiln/ops/reduce.hpp"
#include "kiln/ops/view.hpp"
#include "kiln/autograd/gradcheck.hpp"
#include "kiln/ops/compare.hpp"
#include "kiln/ops/concat.hpp"
#include "kiln/ops/cross_entropy.hpp"
#include "kiln/ops/embedding.hpp"
#include "kiln/ops/gather.hpp"
#include "kiln/ops/matmul.hpp"
#include "kiln/ops/reduce_max.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/rope.hpp"
#include "kiln/ops/softmax.hpp"
#include "kiln/ops/topk.hpp"
#include "kiln/ops/unary.hpp"
#include "kiln/ops/where.hpp"
#include "kiln/optim/adamw.hpp"
