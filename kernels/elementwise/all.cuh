// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "elementwise/binary.cuh"
#include "elementwise/compare.cuh"
#include "elementwise/copy.cuh"
#include "elementwise/swiglu.cuh"
#include "elementwise/unary.cuh"
#include "elementwise/where.cuh"
