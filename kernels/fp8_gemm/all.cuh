// Every kernel of the FP8 GEMM family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "fp8_gemm/quantize.cuh"
#include "fp8_gemm/gemm_simt.cuh"
#include "fp8_gemm/gemm_hopper.cuh"
#include "fp8_gemm/gemm.cuh"
