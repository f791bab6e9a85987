// Dequantization of one GGUF row to float32 for the 32-value block types Q4_0, Q4_1 and Q8_0, with
// AVX2 (ggml's own `to_float` for them is scalar code: ~0.5 ns a value for Q4_1, which the batched
// matmul of ggml_cpu.cpp would pay once per weight row and call). Values equal ggml's exactly:
//   Q4_0 (d, 16 bytes of nibbles): (q - 8) * d;  Q4_1 (d, m, nibbles): q * d + m;  Q8_0 (d, 32 int8): q * d
// with element j of a block in the low nibble of byte j and element j + 16 in its high nibble.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace jackfield_ggml {

inline bool fast_dequant_type(int type) {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return cpu && (type == 2 || type == 3 || type == 8);
}

__attribute__((target("avx2,fma,f16c"))) inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 int8 values at p, widened to float
__attribute__((target("avx2,fma,f16c"))) inline __m256 floats8(__m128i bytes8) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8));
}

// Row of k values (a multiple of 32) of `type` at src into dst.
__attribute__((target("avx2,fma,f16c"))) inline void dequant_row(int type, const uint8_t* src, float* dst, int64_t k) {
  const int64_t nb = k / 32;
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b, dst += 32) {
    __m128i lo, hi;  // values 0..15 and 16..31 as int8
    __m256 d, off;
    if (type == 8) {
      const uint8_t* blk = src + b * 34;
      d = _mm256_set1_ps(half_at(blk));
      off = _mm256_setzero_ps();
      lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
    } else {
      const bool q4_1 = type == 3;
      const uint8_t* blk = src + b * (q4_1 ? 20 : 18);
      const float scale = half_at(blk);
      d = _mm256_set1_ps(scale);
      off = _mm256_set1_ps(q4_1 ? half_at(blk + 2) : -8.0f * scale);
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (q4_1 ? 4 : 2)));
      lo = _mm_and_si128(packed, low);
      hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
    }
    _mm256_storeu_ps(dst, _mm256_fmadd_ps(floats8(lo), d, off));
    _mm256_storeu_ps(dst + 8, _mm256_fmadd_ps(floats8(_mm_srli_si128(lo, 8)), d, off));
    _mm256_storeu_ps(dst + 16, _mm256_fmadd_ps(floats8(hi), d, off));
    _mm256_storeu_ps(dst + 24, _mm256_fmadd_ps(floats8(_mm_srli_si128(hi, 8)), d, off));
  }
}

}  // namespace jackfield_ggml
