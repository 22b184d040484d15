// CPU parallelism through OpenMP (the same threads Eigen's matrix products use). Work is cut into
// chunks whose boundaries depend only on the problem size and the grain, never on the number of
// threads, so every result (reductions included) is bit-identical for any thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kiln::cpu {

// Below this many elements of work a loop runs on the calling thread: a parallel region costs a
// few microseconds, about what one core needs for ~32K simple elements.
inline constexpr std::int64_t parallel_grain = 32768;

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Calls body(chunk_begin, chunk_end) for consecutive chunks of [0, n) of `chunk` items each.
template <class Body>
void parallel_chunks(std::int64_t n, std::int64_t chunk, Body&& body) {
  if (n <= 0) return;
  chunk = std::max<std::int64_t>(chunk, 1);
  const std::int64_t chunks = (n + chunk - 1) / chunk;
  if (chunks == 1) {
    body(std::int64_t{0}, n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (std::int64_t c = 0; c < chunks; ++c) body(c * chunk, std::min(n, (c + 1) * chunk));
}

// Splits [0, n) items, each costing about `cost` elements of work, into parallel chunks.
template <class Body>
void parallel_for(std::int64_t n, std::int64_t cost, Body&& body) {
  const std::int64_t per_item = std::max<std::int64_t>(cost, 1);
  parallel_chunks(n, std::max<std::int64_t>(parallel_grain / per_item, 1), body);
}

}  // namespace kiln::cpu
