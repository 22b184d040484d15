// Compiled once by nvcc into the tests, benchmarks and examples: registers kiln's CUDA backend
// (allocator, copies, every kernel). Files compiled by g++ and linked with it run kiln ops on
// CUDA tensors. A project of your own does the same with one .cu file holding this include.
#include <kiln/backend/cuda.hpp>
