// A float32 GEMM for few rows of x (8 to 32): y[i, r] (+)= sum_k x[i, k] * w[r, k], with the weight
// rows a dequantized tile of ggml_cpu.cpp's batched matmul.
//
// At 16 rows BLAS's sgemm reaches about half the FMA peak of a 2-core AVX2 machine (SmolLM2's
// 3072 x 576 Q4_1 weight: ~52 GMAC/s through 64-row tiles, ~40 for one dense sgemm), since it
// packs x again for every tile. Here x is transposed once per call into xt [K][mp] (mp: m rounded
// up to 8, zero-padded), and a register block of R weight rows by C vectors of 8 rows of x walks K:
// per k, C loads of xt, R broadcasts of w and R x C FMAs into accumulators that stay in registers
// (R = 6, C = 2: 12 of the 16 AVX2 vector registers). Sums run along k in order, one FMA each.
// GCC's vector extensions with the avx2/fma target: the caller checks the CPU first (`supported`).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace jackfield_small_gemm {

#if defined(__x86_64__)
inline bool supported() {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu;
}

typedef float v8 __attribute__((vector_size(32)));

// y[(i0 + i) * ldy + r] (+)= w[r, :] . xt[:, i0 + i] for R weight rows, 8C rows of x (those < m stored)
template <int R, int C>
__attribute__((target("avx2,fma"))) void block(const float* w, int64_t k, const float* xt, int64_t mp, int64_t i0,
                                               int64_t m, float* y, int64_t ldy, bool add) {
  v8 acc[R][C] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    v8 xv[C];
#pragma GCC unroll 2
    for (int c = 0; c < C; ++c) std::memcpy(&xv[c], xt + kk * mp + i0 + 8 * c, sizeof(v8));
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const float wv = w[r * k + kk];
#pragma GCC unroll 2
      for (int c = 0; c < C; ++c) acc[r][c] += wv * xv[c];
    }
  }
  float out[R][C * 8];
  std::memcpy(out, acc, sizeof out);
  for (int c = 0; c < C; ++c)
    for (int l = 0; l < 8 && i0 + 8 * c + l < m; ++l) {
      float* yi = y + (i0 + 8 * c + l) * ldy;
      for (int r = 0; r < R; ++r) yi[r] = add ? yi[r] + out[r][8 * c + l] : out[r][8 * c + l];
    }
}

template <int C>
__attribute__((target("avx2,fma"))) void rows_of_w(const float* w, int64_t rows, int64_t k, const float* xt, int64_t mp,
                                                   int64_t i0, int64_t m, float* y, int64_t ldy, bool add) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) block<6, C>(w + r * k, k, xt, mp, i0, m, y + r, ldy, add);
  for (; r + 2 <= rows; r += 2) block<2, C>(w + r * k, k, xt, mp, i0, m, y + r, ldy, add);
  for (; r < rows; ++r) block<1, C>(w + r * k, k, xt, mp, i0, m, y + r, ldy, add);
}

// y[i * ldy + r] (+ y's value if add) = sum_k xt[k * mp + i] * w[r * k + k'] for i < m, r < rows
__attribute__((target("avx2,fma"))) inline void tile_mm(const float* w, int64_t rows, int64_t k, const float* xt,
                                                        int64_t mp, int64_t m, float* y, int64_t ldy, bool add) {
  int64_t i0 = 0;
  for (; i0 + 16 <= mp; i0 += 16) rows_of_w<2>(w, rows, k, xt, mp, i0, m, y, ldy, add);
  if (i0 < mp) rows_of_w<1>(w, rows, k, xt, mp, i0, m, y, ldy, add);
}
#else
inline bool supported() { return false; }
inline void tile_mm(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t, bool) {}
#endif

// xt [k][mp] = x [m][k] transposed, rows m..mp-1 zero; mp = m rounded up to 8
inline int64_t padded_rows(int64_t m) { return (m + 7) / 8 * 8; }

inline void transpose_padded(const float* x, int64_t m, int64_t k, float* xt) {
  const int64_t mp = padded_rows(m);
  for (int64_t kk = 0; kk < k; ++kk) {
    float* row = xt + kk * mp;
    for (int64_t i = 0; i < m; ++i) row[i] = x[i * k + kk];
    std::fill(row + m, row + mp, 0.f);
  }
}

}  // namespace jackfield_small_gemm
