// CPU reference of the KV-cache kernels (front-end ops/decode_attention.hpp, CUDA kernels
// kernels/decode_attention/): plain loops, accumulation in double (float inputs) or in the input
// type's compute type widened to double, softmax with the running maximum subtracted.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kiln/backend/cpu/parallel.hpp"
#include "kiln/core/dtype.hpp"

namespace kiln::cpu {

inline void cache_write(std::uint8_t* cache, const std::uint8_t* values, const std::int64_t* slots,
                        const std::int64_t* positions, std::int64_t count, std::int64_t steps, std::int64_t row_bytes,
                        std::int64_t capacity) {
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t s = 0; s < steps; ++s)
      std::memcpy(cache + ((slots[a] * capacity) + positions[a] + s) * row_bytes, values + (a * steps + s) * row_bytes,
                  static_cast<std::size_t>(row_bytes));
}

struct DecodeAttentionShape {
  std::int64_t count = 0;
  int heads = 1, kv_heads = 1, dk = 0, dv = 0;
  std::int64_t k_slot_stride = 0, k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_slot_stride = 0, v_row_stride = 0, v_head_stride = 0;
};

template <class T>
void decode_attention(T* out, const T* q, const T* k, const T* v, const std::int64_t* slots,
                      const std::int64_t* lengths, const DecodeAttentionShape& s, double scale) {
  const int group = s.heads / s.kv_heads;
  parallel_for(s.count * s.heads, 64 * (s.dk + s.dv), [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> score;
    std::vector<double> acc(static_cast<std::size_t>(s.dv));
    for (std::int64_t ah = begin; ah < end; ++ah) {
      const std::int64_t a = ah / s.heads;
      const int h = static_cast<int>(ah % s.heads), kvh = h / group;
      const std::int64_t L = lengths[a];
      const T* qa = q + ah * s.dk;
      const T* ka = k + slots[a] * s.k_slot_stride + kvh * s.k_head_stride;
      const T* va = v + slots[a] * s.v_slot_stride + kvh * s.v_head_stride;
      score.assign(static_cast<std::size_t>(L), 0.0);
      double m = -INFINITY;
      for (std::int64_t j = 0; j < L; ++j) {
        double dot = 0.0;
        for (int d = 0; d < s.dk; ++d)
          dot += static_cast<double>(qa[d]) * static_cast<double>(ka[j * s.k_row_stride + d]);
        score[static_cast<std::size_t>(j)] = dot * scale;
        m = std::max(m, dot * scale);
      }
      double total = 0.0;
      for (double& x : score) total += (x = std::exp(x - m));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t j = 0; j < L; ++j) {
        const double p = score[static_cast<std::size_t>(j)] / total;
        for (int d = 0; d < s.dv; ++d) acc[static_cast<std::size_t>(d)] += p * static_cast<double>(va[j * s.v_row_stride + d]);
      }
      T* o = out + ah * s.dv;
      for (int d = 0; d < s.dv; ++d) o[d] = convert<T>(acc[static_cast<std::size_t>(d)]);
    }
  });
}

}  // namespace kiln::cpu
