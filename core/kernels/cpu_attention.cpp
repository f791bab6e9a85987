// Decode attention on the CPU: one query token per request attends to the request's keys and
// values read straight from the paged float32 KV pool, with no gathered copy.
//
// torch_native's decode gathers every key and value of the batch into a new tensor
// (index_select), then calls SDPA. At batch 1 the step is bound by reading the cache: SmolLM2 at
// 200 tokens of context reads 9 MB of float32 K and V a step, and the gather reads them, writes
// a copy and reads that again. Here each query head walks its request's slots once: scores
// (dot products with the key rows), a softmax, and the value rows summed with those weights. Work
// is split over (request, head) pairs with at::parallel_for; heads of one kv group are neighbours,
// so a thread mostly re-reads key rows that are still in its cache.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

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
  const int64_t group = H / Hkv;
  auto out = torch::empty({B, H, Dv}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k_buf.data_ptr<float>();
  const float* vp = v_buf.data_ptr<float>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = seq_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t ks0 = k_buf.stride(0), ks1 = k_buf.stride(1), vs0 = v_buf.stride(0), vs1 = v_buf.stride(1);
  const float sc = static_cast<float>(scale), cap = static_cast<float>(logit_cap);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / group;
      const int64_t len = std::min(lp[b], max_len);
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, len - sliding_window) : 0;
      const float* qh = qp + bh * D;
      const int64_t* row = sp + b * max_len;
      float* oh = op + bh * Dv;
      std::fill(oh, oh + Dv, 0.f);
      if (len <= first) continue;
      p.resize(len - first);
      float top = -INFINITY;
      for (int64_t j = first; j < len; ++j) {
        const float* kr = kp + row[j] * ks0 + g * ks1;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t t = 0; t < D; ++t) s += qh[t] * kr[t];
        s *= sc;
        if (cap > 0.f) s = cap * std::tanh(s / cap);
        p[j - first] = s;
        top = std::max(top, s);
      }
      float total = 0.f;
      for (float& s : p) {
        s = std::exp(s - top);
        total += s;
      }
      const float inv = 1.f / total;
      for (int64_t j = first; j < len; ++j) {
        const float* vr = vp + row[j] * vs0 + g * vs1;
        const float w = p[j - first] * inv;
#pragma omp simd
        for (int64_t t = 0; t < Dv; ++t) oh[t] += w * vr[t];
      }
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
