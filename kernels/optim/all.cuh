// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "optim/adamw.cuh"
#include "optim/grad_norm.cuh"
