"""Weight-only 8-bit matmul (Triton): y = x (q * s)^T + b for int8 or FP8 codes q [N, K] with one
scale per output row, activations in the compute dtype.

Each K step converts a [BLOCK_N, BLOCK_K] tile of codes to the activation dtype (exact: int8 and
e4m3 values are representable in bf16 and fp16) and feeds the tensor cores; the row scales apply
once to the float32 accumulator. For decode batches (a few to a few hundred rows) this reads the
weight once at 8 bits; large prefill batches are compute-bound and go to cuBLAS on a dequantized
copy instead (int8_wo.py). Batch-1 rows go through the SDK's Gemv.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield_plugins.quant.gemm_tiles import grid_size, output_tile, store_tile


@triton.jit
def _w8a16_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                  HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    offs_m, offs_n, m_mask, n_mask = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]  # W^T tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - kt * BLOCK_K
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(x, w.to(x.dtype), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc = acc * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    store_tile(y_ptr, acc, b_ptr, offs_m, offs_n, m_mask, n_mask, stride_ym, HAS_BIAS)


def w8a16_tiles(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by rows; benchmarks/studies/quant_gemm.py times the choice."""
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 64, 64, 4, 4
    return 128, 128, 64, 8, 3


def w8a16_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 tiles: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K) times (q [N, K] int8/FP8 codes * scale [N])^T, plus bias; [M, N] in x's dtype."""
    m, k = x.shape
    n = q.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = tiles or w8a16_tiles(m)
    grid = grid_size(m, n, bm, bn)
    _w8a16_kernel[grid](x, q, scale, bias if bias is not None else scale, y, m, n, k, x.stride(0), q.stride(0),
                        y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                        num_warps=warps, num_stages=stages)
    return y
