// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "reduce/reduce.cuh"
#include "reduce/max_backward.cuh"
