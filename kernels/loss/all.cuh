// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "loss/cross_entropy.cuh"
