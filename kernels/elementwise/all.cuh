// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "elementwise/binary.cuh"
#include "elementwise/copy.cuh"
