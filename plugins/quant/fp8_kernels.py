"""FP8 W8A8 on the GPU (Triton): dynamic activation quantization and the scaled GEMM.

`quantize_activations(x, group)` quantizes each row of x [M, K] (group None: one scale per row;
else one per row and group of `group` columns) in one launch: a program per (row, group) reads
its columns twice, once for the amax and once to write the codes.

`w8a8_matmul` computes y = (xq * xs) (wq * ws)^T + b with FP8 tensor-core dots accumulated in
float32: per-channel weight scales ws [N] apply once to the accumulator; block-wise scales
(ws [cdiv(N, bn), cdiv(K, bk)], activation scales per row and bk-group) apply per K step, so the
kernel's BLOCK_K divides the scale block's bk. Programs are ordered in groups of GROUP_M row-tiles so
neighbouring programs share weight tiles in L2.

Imported only when an FP8 layer runs on CUDA (triton is never imported at discovery).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield_plugins.quant.gemm_tiles import grid_size, output_tile, store_tile

FP8_MAX = tl.constexpr(448.0)  # largest finite float8_e4m3fn (a constexpr: kernels read it)


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, K, group, stride_xm, stride_qm, stride_sm, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    start = g * group
    end = tl.minimum(start + group, K)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    for k0 in range(start, end, BLOCK):
        cols = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + cols, mask=cols < end, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, 0)
    scale = tl.where(m > 0, m / FP8_MAX, 1.0)
    tl.store(s_ptr + row * stride_sm + g, scale)
    for k0 in range(start, end, BLOCK):
        cols = k0 + offs
        x = tl.load(x_ptr + row * stride_xm + cols, mask=cols < end, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + row * stride_qm + cols, q.to(q_ptr.dtype.element_ty), mask=cols < end)


def quantize_activations(x: torch.Tensor, group: int | None = None,
                         out_dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] in out_dtype, scales [M, groups] float32) of x [M, K] (unit stride along K).
    `out_dtype` float32 returns the unrounded x / scale (for checking the kernel where FP8
    conversion cannot run, as under TRITON_INTERPRET)."""
    m, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    group = group or k
    groups = triton.cdiv(k, group)
    q = torch.empty(m, k, dtype=out_dtype, device=x.device)
    s = torch.empty(m, groups, dtype=torch.float32, device=x.device)
    if m:
        block = min(triton.next_power_of_2(group), 1024)
        _act_quant_kernel[(m, groups)](x, q, s, k, group, x.stride(0), q.stride(0), s.stride(0), BLOCK=block,
                                       num_warps=4 if block <= 512 else 8)
    return q, s


@triton.jit
def _w8a8_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, K,
                 stride_am, stride_bn, stride_cm, stride_asm, stride_bsn,
                 BLOCKWISE: tl.constexpr, SCALE_N: tl.constexpr, SCALE_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, m_mask, n_mask = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]  # W^T tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if BLOCKWISE:  # BLOCK_K divides the scale block's width: one activation and weight scale per step
            kb = (kt * BLOCK_K) // SCALE_K
            a_s = tl.load(as_ptr + offs_m * stride_asm + kb, mask=m_mask, other=0.0)
            b_s = tl.load(bs_ptr + (offs_n // SCALE_N) * stride_bsn + kb, mask=n_mask, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if not BLOCKWISE:
        a_s = tl.load(as_ptr + offs_m * stride_asm, mask=m_mask, other=0.0)
        b_s = tl.load(bs_ptr + offs_n, mask=n_mask, other=0.0)
        acc = acc * a_s[:, None] * b_s[None, :]
    store_tile(c_ptr, acc, bias_ptr, offs_m, offs_n, m_mask, n_mask, stride_cm, HAS_BIAS)


def w8a8_tiles(m: int, block: tuple[int, int] | None) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by rows; benchmarks/studies/quant_gemm.py times the choice."""
    block_k = min(block[1], 128) if block is not None else 128
    if m <= 16:
        return 16, 64, block_k, 4, 4
    if m <= 64:
        return 64, 64, block_k, 4, 4
    return 128, 128, block_k, 8, 3


def w8a8_matmul(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
                block: tuple[int, int] | None, bias: torch.Tensor | None, out_dtype: torch.dtype,
                tiles: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """y [M, N] = (xq * xs) (wq * ws)^T + bias. xq [M, K] FP8 with xs [M, 1] (per token) or
    [M, cdiv(K, bk)] (block-wise); wq [N, K] FP8 with ws [N] or [cdiv(N, bn), cdiv(K, bk)]."""
    m, k = xq.shape
    n = wq.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = tiles or w8a8_tiles(m, block)
    if block is not None and block[1] % bk:
        raise ValueError(f"block-wise w8a8 needs BLOCK_K dividing the scale block's {block[1]} columns, got {bk}")
    grid = grid_size(m, n, bm, bn)
    _w8a8_kernel[grid](xq, wq, y, xs, ws, bias if bias is not None else ws, m, n, k,
                       xq.stride(0), wq.stride(0), y.stride(0), xs.stride(0), ws.stride(0) if ws.dim() == 2 else 0,
                       BLOCKWISE=block is not None, SCALE_N=block[0] if block is not None else 1,
                       SCALE_K=block[1] if block is not None else 1,
                       HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                       num_warps=warps, num_stages=stages)
    return y
