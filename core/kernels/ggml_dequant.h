// Reading GGUF blocks back as float32 for the batched matmul of ggml_cpu.cpp.
//
// Weights: one row of the 32-value block types Q4_0, Q4_1 and Q8_0 with AVX2 (ggml's own `to_float`
// for them is scalar code, ~0.5 ns a value for Q4_1, paid once per weight row and call). Values
// equal ggml's exactly:
//   Q4_0 (d, 16 bytes of nibbles): (q - 8) * d;  Q4_1 (d, m, nibbles): q * d + m;  Q8_0 (d, 32 int8): q * d
// with element j of a block in the low nibble of byte j and element j + 16 in its high nibble.
// Activations: a row that ggml's from_float quantized to int8 blocks (Q8_0, Q8_1, Q8_K), as floats,
// and Q8_1's half-precision block sums. Off x86-64 only the activation readers exist (portable C++).
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace jackfield_ggml {

// IEEE half to float without F16C (the activations' reader runs on any x86-64)
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) bits = sign | 0x7F800000u | (man << 13);
  else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
  else if (man == 0) bits = sign;
  else {  // subnormal: value man * 2^-24
    float f = (float)man * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

#if defined(__x86_64__)
inline bool fast_dequant_type(int type) {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return cpu && (type == 2 || type == 3 || type == 8);
}

__attribute__((target("avx2,fma,f16c"))) inline float half_at_f16c(const uint8_t* p) {
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
      d = _mm256_set1_ps(half_at_f16c(blk));
      off = _mm256_setzero_ps();
      lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
    } else {
      const bool q4_1 = type == 3;
      const uint8_t* blk = src + b * (q4_1 ? 20 : 18);
      const float scale = half_at_f16c(blk);
      d = _mm256_set1_ps(scale);
      off = _mm256_set1_ps(q4_1 ? half_at_f16c(blk + 2) : -8.0f * scale);
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

#else
inline bool fast_dequant_type(int) { return false; }
inline void dequant_row(int, const uint8_t*, float*, int64_t) {}  // never called: fast_dequant_type is false
#endif

// Activations as the per-pair path sees them: a row quantized to the weight's `vec_dot` type (by
// ggml's from_float) read back as floats, q * d (Q8_0: half d, 32 int8; Q8_1: half d, half s, 32
// int8; Q8_K: float d, 256 int8, 16 int16 sums). False for other types (F16, BF16, F32: the caller
// reads them with ggml's to_float, or uses x as it is).
inline bool read_activations(int vdt, const uint8_t* src, float* dst, int64_t k) {
  int64_t qk, bs, qs_at;
  if (vdt == 8) qk = 32, bs = 34, qs_at = 2;
  else if (vdt == 9) qk = 32, bs = 36, qs_at = 4;
  else if (vdt == 15) qk = 256, bs = 292, qs_at = 4;
  else return false;
  for (int64_t b = 0; b < k / qk; ++b) {
    const uint8_t* blk = src + b * bs;
    float d;
    if (vdt == 15) std::memcpy(&d, blk, 4);
    else d = half_at(blk);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + qs_at);
    for (int64_t j = 0; j < qk; ++j) dst[b * qk + j] = (float)q[j] * d;
  }
  return true;
}

// Per block of a Q8_1 row (half d, half s, 32 int8): the stored half s minus d * sum(q) in float.
inline void q8_1_sum_errors(const uint8_t* src, int64_t k, float* dst) {
  for (int64_t b = 0; b < k / 32; ++b) {
    const uint8_t* blk = src + b * 36;
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 4);
    int sum = 0;
    for (int j = 0; j < 32; ++j) sum += q[j];
    dst[b] = half_at(blk + 2) - half_at(blk) * (float)sum;
  }
}

}  // namespace jackfield_ggml
