// Decode attention on the CPU: one query token per request attends to the request's keys and
// values read straight from the paged float32 KV pool, with no gathered copy.
//
// torch_native's decode gathers every key and value of the batch into a new tensor
// (index_select), then calls SDPA. At batch 1 the step is bound by reading the cache: SmolLM2 at
// 200 tokens of context reads 9 MB of float32 K and V a step, and the gather reads them, writes
// a copy and reads that again. Here the work is split over (request, kv head) pairs with
// at::parallel_for, and each pair walks its request's slots for all the query heads of its group:
// scores (dot products with the key rows), a softmax, and the value rows summed with those
// weights, so every key and value row is read from memory once.
//
// Head sizes of 64 and 128 take vector code (GCC's vector extensions: 8-float vectors, AVX2 or
// wider, NEON pairs on ARM): the scores of 8 keys are accumulated as 8 vectors and reduced
// together (one transpose-and-add, instead of one horizontal sum per score), the exponentials run
// 8 at a time, and each head's output stays in registers while the value rows stream past.
// Other head sizes take the same steps one lane at a time.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 r;
  std::memcpy(&r, p, sizeof r);
  return r;
}

inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// lane i: the sum of a[i]'s eight lanes
inline v8 sum_each(const v8* a) {
  v8 b[4], c[2];
  for (int i = 0; i < 4; ++i)
    b[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], v8i{0, 8, 2, 10, 4, 12, 6, 14}) +
           __builtin_shuffle(a[2 * i], a[2 * i + 1], v8i{1, 9, 3, 11, 5, 13, 7, 15});
  for (int i = 0; i < 2; ++i)
    c[i] = __builtin_shuffle(b[2 * i], b[2 * i + 1], v8i{0, 1, 8, 9, 4, 5, 12, 13}) +
           __builtin_shuffle(b[2 * i], b[2 * i + 1], v8i{2, 3, 10, 11, 6, 7, 14, 15});
  return __builtin_shuffle(c[0], c[1], v8i{0, 1, 2, 3, 8, 9, 10, 11}) +
         __builtin_shuffle(c[0], c[1], v8i{4, 5, 6, 7, 12, 13, 14, 15});
}

// e^x for x <= 0 in a form the compiler vectorizes: x = n ln2 + r with |r| <= ln2 / 2, e^r by its
// degree-6 Taylor polynomial (relative error < 3e-8), 2^n written into the float's exponent bits.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float e = 1.0f / 720.0f;
  e = e * r + 1.0f / 120.0f;
  e = e * r + 1.0f / 24.0f;
  e = e * r + 1.0f / 6.0f;
  e = e * r + 0.5f;
  e = e * r + 1.0f;
  e = e * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return e * two_n;
}

// One (request, kv head) pair's rows: n keys and values, row j at k + rows[j] * ks (likewise v).
struct Rows {
  const float* k;
  const float* v;
  const int64_t* rows;
  int64_t ks, vs, n;
};

// p[h * n + j] = q_h . k_j for the group's G query heads (q: G x D, dense)
template <int D>
void scores_vec(const float* q, int64_t G, const Rows& r, float* p) {
  int64_t j = 0;
  for (; j + 8 <= r.n; j += 8) {
    const float* kr[8];
    for (int i = 0; i < 8; ++i) kr[i] = r.k + r.rows[j + i] * r.ks;
    for (int64_t h = 0; h < G; ++h) {
      v8 acc[8] = {};
      for (int c = 0; c < D; c += 8) {
        const v8 qc = load8(q + h * D + c);
        for (int i = 0; i < 8; ++i) acc[i] += qc * load8(kr[i] + c);
      }
      store8(p + h * r.n + j, sum_each(acc));
    }
  }
  for (; j < r.n; ++j) {
    const float* kr = r.k + r.rows[j] * r.ks;
    for (int64_t h = 0; h < G; ++h) {
      v8 acc = {};
      for (int c = 0; c < D; c += 8) acc += load8(q + h * D + c) * load8(kr + c);
      float s = 0.f;
      for (int i = 0; i < 8; ++i) s += acc[i];
      p[h * r.n + j] = s;
    }
  }
}

void scores_any(const float* q, int64_t G, int64_t D, const Rows& r, float* p) {
  for (int64_t j = 0; j < r.n; ++j) {
    const float* kr = r.k + r.rows[j] * r.ks;
    for (int64_t h = 0; h < G; ++h) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t t = 0; t < D; ++t) s += q[h * D + t] * kr[t];
      p[h * r.n + j] = s;
    }
  }
}

// out_h = sum_j w[h * n + j] * v_j * inv[h] for the group's heads (out: G x D, dense)
template <int D>
void values_vec(const float* w, const float* inv, int64_t G, const Rows& r, float* out) {
  for (int64_t h = 0; h < G; ++h) {
    v8 acc[D / 8] = {};
    for (int64_t j = 0; j < r.n; ++j) {
      const float* vr = r.v + r.rows[j] * r.vs;
      const float wj = w[h * r.n + j];
      for (int c = 0; c < D / 8; ++c) acc[c] += wj * load8(vr + 8 * c);
    }
    for (int c = 0; c < D / 8; ++c) store8(out + h * D + 8 * c, acc[c] * inv[h]);
  }
}

void values_any(const float* w, const float* inv, int64_t G, int64_t Dv, const Rows& r, float* out) {
  std::fill(out, out + G * Dv, 0.f);
  for (int64_t j = 0; j < r.n; ++j) {
    const float* vr = r.v + r.rows[j] * r.vs;
    for (int64_t h = 0; h < G; ++h) {
      const float wj = w[h * r.n + j] * inv[h];
#pragma omp simd
      for (int64_t t = 0; t < Dv; ++t) out[h * Dv + t] += wj * vr[t];
    }
  }
}

// p[h] <- softmax(p[h]) without its 1 / sum, which goes to inv[h]; scores capped first if cap > 0
void softmax_rows(float* p, float* inv, int64_t G, int64_t n, float cap) {
  for (int64_t h = 0; h < G; ++h) {
    float* ph = p + h * n;
    if (cap > 0.f)
      for (int64_t j = 0; j < n; ++j) ph[j] = cap * std::tanh(ph[j] / cap);
    float top = -INFINITY;
    for (int64_t j = 0; j < n; ++j) top = std::max(top, ph[j]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < n; ++j) {
      ph[j] = exp_nonpositive(ph[j] - top);
      total += ph[j];
    }
    inv[h] = 1.f / total;
  }
}

// q [B, H, D]; k_buf [N, Hkv, D] and v_buf [N, Hkv, Dv] (rows may be strided, the last dim dense);
// slots int64 [B, max_len], request b's keys in its first seq_lens[b] entries; seq_lens int64 [B].
// sliding_window > 0: only the last sliding_window keys; logit_cap > 0: scores cap * tanh(s / cap).
torch::Tensor decode(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                     const torch::Tensor& slots, const torch::Tensor& seq_lens, double scale,
                     int64_t sliding_window, double logit_cap) {
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.scalar_type() == torch::kFloat, "q: contiguous float32 [B, H, D]");
  TORCH_CHECK(k_buf.scalar_type() == torch::kFloat && v_buf.scalar_type() == torch::kFloat, "the pool must be float32");
  TORCH_CHECK(k_buf.stride(2) == 1 && v_buf.stride(2) == 1, "pool rows must be dense in their last dimension");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && slots.is_contiguous() && slots.dim() == 2, "slots: int64 [B, L]");
  TORCH_CHECK(seq_lens.scalar_type() == torch::kLong && seq_lens.is_contiguous(), "seq_lens: int64 [B]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t Hkv = k_buf.size(1), Dv = v_buf.size(2), max_len = slots.size(1);
  TORCH_CHECK(k_buf.size(2) == D && H % Hkv == 0 && slots.size(0) == B && seq_lens.size(0) == B, "shape mismatch");
  const int64_t G = H / Hkv;
  auto out = torch::empty({B, H, Dv}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k_buf.data_ptr<float>();
  const float* vp = v_buf.data_ptr<float>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = seq_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t ks0 = k_buf.stride(0), ks1 = k_buf.stride(1), vs0 = v_buf.stride(0), vs1 = v_buf.stride(1);
  const float sc = static_cast<float>(scale), cap = static_cast<float>(logit_cap);
  const int vec = D == Dv && (D == 64 || D == 128) ? (int)D : 0;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qs(G * D), p, inv(G);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const int64_t len = std::min(lp[b], max_len);
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, len - sliding_window) : 0;
      const Rows r{kp + g * ks1, vp + g * vs1, sp + b * max_len + first, ks0, vs0, std::max<int64_t>(0, len - first)};
      float* og = op + (b * H + g * G) * Dv;
      if (r.n == 0) {
        std::fill(og, og + G * Dv, 0.f);
        continue;
      }
      const float* qg = qp + (b * H + g * G) * D;
      for (int64_t i = 0; i < G * D; ++i) qs[i] = qg[i] * sc;
      p.resize(G * r.n);
      if (vec == 64) scores_vec<64>(qs.data(), G, r, p.data());
      else if (vec == 128) scores_vec<128>(qs.data(), G, r, p.data());
      else scores_any(qs.data(), G, D, r, p.data());
      softmax_rows(p.data(), inv.data(), G, r.n, cap);
      if (vec == 64) values_vec<64>(p.data(), inv.data(), G, r, og);
      else if (vec == 128) values_vec<128>(p.data(), inv.data(), G, r, og);
      else values_any(p.data(), inv.data(), G, Dv, r, og);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(jackfield_cpu_attention, lib) {
  lib.def("decode(Tensor q, Tensor k_buf, Tensor v_buf, Tensor slots, Tensor seq_lens, float scale, "
          "int sliding_window, float logit_cap) -> Tensor");
}

TORCH_LIBRARY_IMPL(jackfield_cpu_attention, CPU, lib) {
  lib.impl("decode", &decode);
}
