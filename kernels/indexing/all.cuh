// Every kernel of this family; included by include/kiln/backend/cuda.hpp.
#pragma once
#include "indexing/gather.cuh"
#include "indexing/index_rows.cuh"
#include "indexing/topk.cuh"
