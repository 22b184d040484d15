// The host-side CUDA runtime API of kiln, usable from files compiled by g++ or nvcc: device
// count and availability, device/stream guards, events, the caching allocator's statistics.
// (The kernels themselves are registered by <kiln/backend/cuda.hpp>, compiled by nvcc.)
#pragma once

#include "kiln/backend/cuda/allocator.hpp"
#include "kiln/backend/cuda/error.hpp"
#include "kiln/backend/cuda/stream.hpp"
