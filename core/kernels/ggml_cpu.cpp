// y[M, N] = x[M, K] @ W^T for W stored as GGUF blocks, computed by ggml's own CPU dot products.
//
// ggml (llama.cpp's tensor library, shipped as libggml-cpu / libggml-base by llama-cpp-python)
// exposes per-type CPU traits: `vec_dot` multiplies one row of quantized weights with one row of
// activations quantized to the type's `vec_dot_type` (Q8_0, Q8_1 or Q8_K: int8 with block scales),
// using the machine's vector units (AVX2, AVX-512 VNNI ...), and `from_float` quantizes a float
// row to that type. This file only drives them: quantize x's rows once, then split W's rows over
// PyTorch's intra-op threads (at::parallel_for, so torch.set_num_threads governs it).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ggml_dequant.h"
#include "small_gemm.h"

extern "C" {
typedef void (*ggml_to_float_t)(const void* x, float* y, int64_t k);
typedef void (*ggml_from_float_t)(const float* x, void* y, int64_t k);
struct ggml_type_traits {
  const char* type_name;
  int64_t blck_size;
  int64_t blck_size_interleave;
  size_t type_size;
  bool is_quantized;
  ggml_to_float_t to_float;
  ggml_from_float_t from_float_ref;
};
const ggml_type_traits* ggml_get_type_traits(int type);
// BLAS's sgemm (column-major), which torch's CPU library exports (MKL in the x86-64 wheels)
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
typedef void (*ggml_vec_dot_t)(int n, float* s, size_t bs, const void* x, size_t bx, const void* y, size_t by, int nrc);
struct ggml_type_traits_cpu {
  ggml_from_float_t from_float;
  ggml_vec_dot_t vec_dot;
  int vec_dot_type;
  int64_t nrows;
};
const ggml_type_traits_cpu* ggml_get_type_traits_cpu(int type);
void ggml_cpu_init(void);
size_t ggml_row_size(int type, int64_t ne);
int64_t ggml_blck_size(int type);
size_t ggml_quantize_chunk(int type, const float* src, void* dst, int64_t start, int64_t nrows, int64_t n_per_row,
                           const float* imatrix);
bool ggml_quantize_requires_imatrix(int type);
}

namespace {

constexpr int64_t kRowsPerTask = 16;
// From this many rows of x, weight rows are dequantized to float32, kTileRows at a time into a
// buffer that stays in L2, and multiplied by BLAS's sgemm: with AVX2, float FMAs run about twice
// the int8 dot products' rate, and the dequantization is paid once for all the rows of x. Q4_0,
// Q4_1 and Q8_0 dequantize with AVX2 (ggml_dequant.h) from 8 rows; other types with ggml's scalar
// `to_float` (~0.5 ns a value), which pays off from 32 rows.
constexpr int64_t kFastDequantFromRows = 8;
constexpr int64_t kDequantFromRows = 32;
constexpr int64_t kTileRows = 64;
// Up to this many rows of x a tile is multiplied by small_gemm.h's register-blocked loop (x
// transposed once per call) instead of sgemm, which packs x again for every tile; from 48 rows
// sgemm measured as fast or faster. Its tiles are 12 weight rows (two of its 6-row blocks; 27 KB at
// 576 columns, in L1): 3-5% faster than 64-row tiles at 16 and 32 rows of x (6 and 24 alike).
constexpr int64_t kSmallGemmMaxRows = 32;
constexpr int64_t kSmallTileRows = 12;
constexpr int kF32 = 0, kQ8_1 = 9;  // ggml type ids

void check_blocks(const torch::Tensor& w, int64_t type, int64_t k) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.dim() == 2 && w.is_contiguous(), "ggml weights must be contiguous uint8 [N, row_bytes]");
  TORCH_CHECK(k % ggml_blck_size(type) == 0, "in_features ", k, " is not a multiple of the block size ", ggml_blck_size(type));
  TORCH_CHECK(w.size(1) == (int64_t)ggml_row_size(type, k), "ggml row of type ", type, " and ", k, " columns takes ",
              ggml_row_size(type, k), " bytes, weights have ", w.size(1));
}

// x's rows quantized by ggml's from_float to `vdt` (a weight type's vec_dot type): uint8 [m, row bytes].
// F32 (no from_float) is x's bytes as they are.
torch::Tensor quantized_rows(const torch::Tensor& xc, int vdt) {
  const int64_t m = xc.size(0), k = xc.size(1);
  const ggml_from_float_t quantize_row = ggml_get_type_traits_cpu(vdt)->from_float;
  const size_t xq_row = ggml_row_size(vdt, k);
  torch::Tensor xq = torch::empty({m, (int64_t)xq_row}, torch::kUInt8);
  const float* xp = xc.data_ptr<float>();
  uint8_t* xqp = xq.data_ptr<uint8_t>();
  if (quantize_row != nullptr) {
    at::parallel_for(0, m, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) quantize_row(xp + i * k, xqp + i * xq_row, k);
    });
  } else {  // F32 weights dot F32 activations
    TORCH_CHECK(xq_row == (size_t)k * sizeof(float), "type ", vdt, " has no from_float");
    std::memcpy(xqp, xp, m * xq_row);
  }
  return xq;
}

// y = x @ W^T by tiles of W's rows dequantized to float32 and multiplied by torch's CPU sgemm.
// x rounded exactly as the per-pair path rounds it: each row quantized to the weight type's
// vec_dot type (int8 blocks for the quantized types) and read back, so that a token's logits do not
// depend on how many rows share its matmul (batch-1 decode, a speculative verify and a prefill
// agree to float rounding). Q4_1 and Q5_1 multiply their block offsets by Q8_1's block sums, which
// Q8_1 stores as halves: `sums` gets, per row and block, that half minus the exact sum d * sum(q),
// for the caller to add times the offsets.
struct Rounded {
  torch::Tensor x;     // [m, k]
  torch::Tensor sums;  // [m, k / 32] for Q8_1 activations, else undefined
};

Rounded rounded_activations(const torch::Tensor& xc, int64_t type) {
  const int64_t m = xc.size(0), k = xc.size(1);
  const int vdt = ggml_get_type_traits_cpu((int)type)->vec_dot_type;
  if (vdt == kF32 || ggml_get_type_traits_cpu(vdt)->from_float == nullptr) return {xc, {}};
  const ggml_to_float_t to_float = ggml_get_type_traits(vdt)->to_float;
  const torch::Tensor xq = quantized_rows(xc, vdt);
  const size_t xq_row = xq.size(1);
  const uint8_t* xqp = xq.data_ptr<uint8_t>();
  torch::Tensor xr = torch::empty({m, k}, torch::kFloat32);
  torch::Tensor sums = vdt == kQ8_1 ? torch::empty({m, k / 32}, torch::kFloat32) : torch::Tensor();
  float* xrp = xr.data_ptr<float>();
  at::parallel_for(0, m, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t* row = xqp + i * xq_row;
      if (!jackfield_ggml::read_activations(vdt, row, xrp + i * k, k)) {
        TORCH_CHECK(to_float != nullptr, "ggml type ", vdt, " has no to_float");
        to_float(row, xrp + i * k, k);
      }
      if (vdt == kQ8_1) jackfield_ggml::q8_1_sum_errors(row, k, sums.data_ptr<float>() + i * (k / 32));
    }
  });
  return {xr, sums};
}

torch::Tensor dequantized_mm(const torch::Tensor& x, const torch::Tensor& w, int64_t type, bool fast) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0), nb = k / 32;
  const Rounded rounded = rounded_activations(x.contiguous(), type);
  torch::Tensor y = torch::empty({m, n}, torch::kFloat32);
  const float* xp = rounded.x.data_ptr<float>();
  const float* sp = rounded.sums.defined() ? rounded.sums.data_ptr<float>() : nullptr;
  const size_t block_bytes = ggml_row_size((int)type, 32);  // Q4_1 / Q5_1: the offset is the half at byte 2
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const size_t w_row = w.size(1);
  const ggml_to_float_t to_float = ggml_get_type_traits((int)type)->to_float;
  namespace sg = jackfield_small_gemm;
  const bool small = m <= kSmallGemmMaxRows && sg::supported();
  const int64_t mp = sg::padded_rows(m);
  std::vector<float> xt, st;  // x and the block sums transposed, for small_gemm.h
  if (small) {
    xt.resize(k * mp);
    sg::transpose_padded(xp, m, k, xt.data());
    if (sp) {
      st.resize(nb * mp);
      sg::transpose_padded(sp, m, nb, st.data());
    }
  }
  const int64_t tile_rows = small ? kSmallTileRows : kTileRows;
  at::parallel_for(0, n, tile_rows, [&](int64_t lo, int64_t hi) {
    std::vector<float> tile(tile_rows * k), offsets(sp ? tile_rows * nb : 0);
    const int ik = (int)k, im = (int)m, in = (int)n, inb = (int)nb;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = lo; r0 < hi; r0 += tile_rows) {
      const int rows = (int)std::min(tile_rows, hi - r0);
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* src = wp + (r0 + r) * w_row;
        if (fast) jackfield_ggml::dequant_row((int)type, src, tile.data() + r * k, k);
        else to_float(src, tile.data() + r * k, k);
        for (int64_t b = 0; sp && b < nb; ++b) offsets[r * nb + b] = jackfield_ggml::half_at(src + b * block_bytes + 2);
      }
      if (small) {
        sg::tile_mm(tile.data(), rows, k, xt.data(), mp, m, yp + r0, n, false);
        if (sp) sg::tile_mm(offsets.data(), rows, nb, st.data(), mp, m, yp + r0, n, true);
        continue;
      }
      // column-major: y^T[r0:r0+rows, :] (ld n) = tile^T' (rows x k; tile is its k-major storage) x^T (k x m)
      sgemm_("T", "N", &rows, &im, &ik, &one, tile.data(), &ik, xp, &ik, &zero, yp + r0, &in);
      if (sp) sgemm_("T", "N", &rows, &im, &inb, &one, offsets.data(), &inb, sp, &inb, &one, yp + r0, &in);
    }
  });
  return y;
}

torch::Tensor mm(const torch::Tensor& x, const torch::Tensor& w, int64_t type) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2, "x must be float32 [M, K]");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  check_blocks(w, type, k);
  const bool fast = jackfield_ggml::fast_dequant_type((int)type);
  if (m >= (fast ? kFastDequantFromRows : kDequantFromRows) && (fast || ggml_get_type_traits((int)type)->to_float))
    return dequantized_mm(x, w, type, fast);
  const ggml_type_traits_cpu* traits = ggml_get_type_traits_cpu((int)type);
  TORCH_CHECK(traits->vec_dot != nullptr, "ggml has no CPU dot product for type ", type);
  const torch::Tensor xq = quantized_rows(x.contiguous(), traits->vec_dot_type);
  const size_t xq_row = xq.size(1);
  const uint8_t* xqp = xq.data_ptr<uint8_t>();
  torch::Tensor y = torch::empty({m, n}, torch::kFloat32);
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const size_t w_row = w.size(1);
  const ggml_vec_dot_t dot = traits->vec_dot;
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t lo, int64_t hi) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t r = lo; r < hi; ++r) dot((int)k, yp + i * n + r, 0, wp + r * w_row, 0, xqp + i * xq_row, 0, 1);
  });
  return y;
}

torch::Tensor quantize(const torch::Tensor& w, int64_t type) {
  TORCH_CHECK(w.dtype() == torch::kFloat32 && w.dim() == 2, "w must be float32 [N, K]");
  TORCH_CHECK(!ggml_quantize_requires_imatrix((int)type), "ggml type ", type, " needs an importance matrix");
  const torch::Tensor wc = w.contiguous();
  const int64_t n = wc.size(0), k = wc.size(1);
  TORCH_CHECK(k % ggml_blck_size(type) == 0, "in_features ", k, " is not a multiple of the block size ", ggml_blck_size(type));
  torch::Tensor out = torch::empty({n, (int64_t)ggml_row_size(type, k)}, torch::kUInt8);
  ggml_quantize_chunk((int)type, wc.data_ptr<float>(), out.data_ptr<uint8_t>(), 0, n, k, nullptr);
  return out;
}

// How many threads at::parallel_for ran n one-iteration tasks on: torch's intra-op thread count
// where this file was built with OpenMP, 1 where it was not.
int64_t parallel_threads(int64_t n) {
  std::vector<int> used(at::get_num_threads(), 0);
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) { used[at::get_thread_num()] = 1; });
  int64_t count = 0;
  for (int u : used) count += u;
  return count;
}

int64_t init() {
  ggml_cpu_init();
  return 0;
}

}  // namespace

TORCH_LIBRARY(jackfield_ggml, lib) {
  lib.def("init() -> int", &init);
  lib.def("parallel_threads(int n) -> int", &parallel_threads);
  lib.def("mm(Tensor x, Tensor w, int type) -> Tensor");  // a CPU kernel, so torch.compile can add a fake one
  lib.def("quantize(Tensor w, int type) -> Tensor", &quantize);
}

TORCH_LIBRARY_IMPL(jackfield_ggml, CPU, lib) {
  lib.impl("mm", &mm);
}
