"""GGUF matmuls on the GPU (Triton), reading the planes of gguf_layout.py: every tile of weights is
dequantized in registers (`_weight_tile`, one code path for all types, the type's constants as
constexprs) and the products accumulate in float32.

`gguf_gemv` (one row, batch-1 decode): each program streams BLOCK_N full rows, BLOCK_K columns at a
time, accumulating w * x per weight and reducing once after the loop. The first chunk's planes are
loaded before the programmatic-dependent-launch wait (weights are written by no kernel).
`gguf_matmul` (2 rows up to prefill): dequantized tiles in the activation dtype feed tensor-core dots.
`gguf_dequantize` writes the weight [N, K]: very large prefill batches multiply it with cuBLAS.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs
from jackfield_plugins.quant.gemm_tiles import grid_size, output_tile, store_tile
from jackfield_plugins.quant.gguf_layout import GGUFPlanes


@triton.jit
def _codes(low_ptr, high_ptr, rows, rmask, k0, K, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The unsigned (Q8_0: signed) codes of columns [k0, k0 + BLOCK_K) of `rows`: int32 [BLOCK_N, BLOCK_K]."""
    r = rows[:, None].to(tl.int64)
    if BITS == 8:
        cols = k0 + tl.arange(0, BLOCK_K)
        return tl.load(low_ptr + r * K + cols[None, :], mask=rmask[:, None], other=0).to(tl.int32)
    words = tl.load(low_ptr + r * (K // 8) + k0 // 8 + tl.arange(0, BLOCK_K // 8)[None, :], mask=rmask[:, None], other=0)
    q = (words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF
    q = tl.reshape(q, [BLOCK_N, BLOCK_K])
    if BITS > 4:
        PER: tl.constexpr = 32 // (BITS - 4)
        hw = tl.load(high_ptr + r * (K // PER) + k0 // PER + tl.arange(0, BLOCK_K // PER)[None, :],
                     mask=rmask[:, None], other=0)
        h = (hw[:, :, None] >> (tl.arange(0, PER) * (BITS - 4))[None, None, :]) & ((1 << (BITS - 4)) - 1)
        q = q | (tl.reshape(h, [BLOCK_N, BLOCK_K]) << 4)
    return q


@triton.jit
def _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, k0, K,
                 BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
                 MIN_MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The float32 weights [BLOCK_N, BLOCK_K] of `rows` at columns [k0, k0 + BLOCK_K) (gguf_layout's formula)."""
    q = _codes(low_ptr, high_ptr, rows, rmask, k0, K, BITS, BLOCK_N, BLOCK_K)
    NG: tl.constexpr = BLOCK_K // G
    r = rows[:, None].to(tl.int64)
    groups = k0 // G + tl.arange(0, NG)[None, :]
    blocks = r * (K // S) + groups // (S // G)
    s = tl.load(d_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)
    if HAS_SC:
        s = s * tl.load(sc_ptr + r * (K // G) + groups, mask=rmask[:, None], other=0).to(tl.float32)
    v = tl.reshape(q, [BLOCK_N, NG, G]).to(tl.float32) - OFFSET
    w = s[:, :, None] * v
    if MIN_MODE == 1:
        w = w + tl.load(dm_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)[:, :, None]
    if MIN_MODE == 2:
        m = tl.load(dm_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)
        m = m * tl.load(mn_ptr + r * (K // G) + groups, mask=rmask[:, None], other=0).to(tl.float32)
        w = w - m[:, :, None]
    return tl.reshape(w, [BLOCK_N, BLOCK_K])


def _planes(p: GGUFPlanes) -> tuple:
    """The six plane pointers of the kernels (a missing plane: `d`, never read) and the type's constexprs."""
    f = p.fmt
    ptrs = tuple(t if t is not None else p.d for t in (p.low, p.high, p.sc, p.mn, p.d, p.dm))
    return ptrs, dict(BITS=f.bits, G=f.group, S=f.block, OFFSET=f.offset, HAS_SC=f.has_sc, MIN_MODE=f.min_mode)


@triton.jit
def _gemv_kernel(x_ptr, low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, b_ptr, y_ptr, N, K,
                 BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
                 MIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, 0, K, BITS, G, S, OFFSET, HAS_SC,
                     MIN_MODE, BLOCK_N, BLOCK_K)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x is written by the kernel before: read it only from here
    acc = w * tl.load(x_ptr + cols).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, k0, K, BITS, G, S, OFFSET,
                         HAS_SC, MIN_MODE, BLOCK_N, BLOCK_K)
        acc += w * tl.load(x_ptr + k0 + cols).to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def block_k(p: GGUFPlanes, largest: int = 256) -> int:
    """The widest power-of-two chunk (at most `largest`, at least the type's sub-block) dividing K."""
    bk = largest
    while bk > max(p.fmt.group, 32) and p.in_features % bk:
        bk //= 2
    if p.in_features % bk or bk % p.fmt.group:
        raise ValueError(f"GGUF kernels: K {p.in_features} is not a multiple of {max(p.fmt.group, 32)}")
    return bk


def gguf_gemv(x: torch.Tensor, p: GGUFPlanes, bias: torch.Tensor | None = None, block_n: int = 4,
              block_k_max: int = 256, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x [1, K] contiguous -> [1, N] in x's dtype."""
    n, k = p.out_features, p.in_features
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    ptrs, consts = _planes(p)
    _gemv_kernel[(triton.cdiv(n, block_n),)](x, *ptrs, bias if bias is not None else p.d, y, n, k, **consts,
                                             HAS_BIAS=bias is not None, BLOCK_N=block_n,
                                             BLOCK_K=block_k(p, block_k_max), num_warps=num_warps,
                                             num_stages=num_stages, **pdl_kwargs(x))
    return y


@triton.jit
def _mm_kernel(x_ptr, low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
               BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
               MIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, m_mask, n_mask = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)
        w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, offs_n, n_mask, k0, K, BITS, G, S, OFFSET,
                         HAS_SC, MIN_MODE, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    store_tile(y_ptr, acc, b_ptr, offs_m, offs_n, m_mask, n_mask, stride_ym, HAS_BIAS)


def mm_tiles(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K limit, num_warps, num_stages) by rows."""
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 64, 64, 4, 3
    return 128, 128, 64, 8, 3


def gguf_matmul(x: torch.Tensor, p: GGUFPlanes, bias: torch.Tensor | None = None,
                tiles: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K) times the weight^T, plus bias: [M, N] in x's dtype."""
    m, n = x.shape[0], p.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = tiles or mm_tiles(m)
    ptrs, consts = _planes(p)
    _mm_kernel[grid_size(m, n, bm, bn)](x, *ptrs, bias if bias is not None else p.d, y, m, n, p.in_features,
                                        x.stride(0), y.stride(0), **consts, HAS_BIAS=bias is not None, BLOCK_M=bm,
                                        BLOCK_N=bn, BLOCK_K=block_k(p, bk), GROUP_M=8, num_warps=warps,
                                        num_stages=stages)
    return y


@triton.jit
def _dequant_kernel(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, w_ptr, N, K,
                    BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
                    MIN_MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rmask = rows < N
    w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, k0, K, BITS, G, S, OFFSET, HAS_SC,
                     MIN_MODE, BLOCK_N, BLOCK_K)
    out = w_ptr + rows[:, None].to(tl.int64) * K + k0 + tl.arange(0, BLOCK_K)[None, :]
    tl.store(out, w.to(w_ptr.dtype.element_ty), mask=rmask[:, None])


def gguf_dequantize(p: GGUFPlanes, dtype: torch.dtype) -> torch.Tensor:
    """The weight [N, K] in `dtype`."""
    n, k = p.out_features, p.in_features
    w = torch.empty(n, k, dtype=dtype, device=p.low.device)
    bk = block_k(p, 64 if p.fmt.group <= 64 else p.fmt.group)
    ptrs, consts = _planes(p)
    _dequant_kernel[(triton.cdiv(n, 16), k // bk)](*ptrs, w, n, k, **consts, BLOCK_N=16, BLOCK_K=bk, num_warps=4)
    return w
