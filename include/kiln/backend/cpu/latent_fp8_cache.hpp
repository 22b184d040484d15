// CPU reference of decode attention over an FP8 latent cache (front-end ops/latent_fp8_cache.hpp,
// CUDA kernel kernels/decode_attention/decode_attention.cuh with its FP8 variant): MLA's absorbed
// decode, one kv head shared by every query head, with each cached token stored as
//   latent  r e4m3 values, one FP32 scale per 128 of them (the 1×128 tiles of math/fp8.hpp),
//   rope    dr values of the model's type (the rotated shared key, kept exact: it carries position),
// and read as key k_j = [latent_j ⊙ scale_j, rope_j] (r + dr), value v_j = latent_j ⊙ scale_j (r).
// The dequantized value of byte e with scale s is e4m3(e) · s, formed in double here (exactly:
// an e4m3 value has 4 significant bits, a float scale 24). The attention itself is attend_tokens
// (backend/cpu/decode_attention.hpp), accumulating in double.
#pragma once

#include <cstdint>

#include "kiln/backend/cpu/decode_attention.hpp"
#include "kiln/backend/cpu/fp8_gemm.hpp"

namespace kiln::cpu {

// The rows of one FP8 latent cache: token index `tok` (block · block_tokens + row when paged,
// slot · capacity + position when contiguous) has its latent at latent + tok·r, its scales at
// scales + tok·ceil(r/128), its rope part at rope + tok·dr.
template <class T>
struct Fp8LatentRows {
  const std::uint8_t* latent = nullptr;
  const float* scales = nullptr;
  const T* rope = nullptr;
  int r = 0, dr = 0;

  std::int64_t scale_blocks() const { return (r + 127) / 128; }
};

// q [count, queries, heads, r + dr] -> out [count, queries, heads, r]; token_of(a, j) gives the
// token index of token j of batch row a's sequence. Causal among a row's queries as attend_tokens.
template <class T, class TokenOf>
void fp8_latent_attention(T* out, const T* q, const Fp8LatentRows<T>& c, const std::int64_t* lengths,
                          std::int64_t count, int queries, int heads, TokenOf token_of, double scale) {
  const auto& value = e4m3_values();
  const std::int64_t nb = c.scale_blocks();
  attend_tokens(
      out, q, lengths, CachedAttentionShape{count, queries, heads, 1, c.r + c.dr, c.r, 0, 0},
      [&](std::int64_t a, std::int64_t j, int, const T* qa) {
        const std::int64_t tok = token_of(a, j);
        const std::uint8_t* lat = c.latent + tok * c.r;
        const float* sc = c.scales + tok * nb;
        const T* rope = c.rope + tok * c.dr;
        double dot = 0.0;
        for (int d = 0; d < c.r; ++d)
          dot += static_cast<double>(qa[d]) * (static_cast<double>(value[lat[d]]) * static_cast<double>(sc[d / 128]));
        for (int d = 0; d < c.dr; ++d) dot += static_cast<double>(qa[c.r + d]) * static_cast<double>(rope[d]);
        return dot;
      },
      [&](std::int64_t a, std::int64_t j, int, double p, double* acc) {
        const std::int64_t tok = token_of(a, j);
        const std::uint8_t* lat = c.latent + tok * c.r;
        const float* sc = c.scales + tok * nb;
        for (int d = 0; d < c.r; ++d)
          acc[d] += p * (static_cast<double>(value[lat[d]]) * static_cast<double>(sc[d / 128]));
      },
      scale);
}

}  // namespace kiln::cpu
