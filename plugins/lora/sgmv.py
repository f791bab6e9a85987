"""Triton kernels of the `triton` LoRA backend (Punica / S-LoRA style), each adding into the base
GEMM's output in place, so no separate add runs.

- SGMV (prefill, mixed): segments of consecutive tokens sharing a slot. `shrink` computes
  xa = x A_s^T per (token block, segment, slice); `expand` computes out += scaling_s * xa_j B_s,j^T per
  (token block x column block, segment, slice). A program whose segment runs the base model (slot -1)
  or whose slot does not adapt the slice (rank 0) returns at once.
- BGMV (decode): one token per row, any slot per token. `shrink` / `expand` are matrix-vector
  products per (token, slice); for a few tokens `expand` does both in one launch (FUSED), each program
  recomputing its token's x A^T for its own block of output columns. Decode kernels read only device
  tensors, so they are captured in CUDA graphs.
Slices of a fused layer (q/k/v, gate/up) are up to three: slice j's A rows start at j * MAX_RANK and
its output columns at offset_j.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FUSED_DECODE_MAX_TOKENS = 4  # up to this many decode tokens, shrink and expand run as one kernel


@triton.jit
def _slice(j, v0, v1, v2):
    return tl.where(j == 0, v0, tl.where(j == 1, v1, v2))


@triton.jit
def _sgmv_shrink(x, a, xa, seg_starts, seg_lens, seg_slots, ranks, K, stride_x, stride_as, stride_ar, stride_xa,
                 stride_rk, MAX_RANK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    pid_t = tl.program_id(0)
    seg = tl.program_id(1)
    j = tl.program_id(2)
    slot = tl.load(seg_slots + seg)
    if slot < 0:
        return
    rank = tl.load(ranks + slot * stride_rk + j)
    n = tl.load(seg_lens + seg)
    if (rank == 0) | (pid_t * BLOCK_T >= n):
        return
    start = tl.load(seg_starts + seg)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = (start + t).to(tl.int64)
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    a_base = a + slot.to(tl.int64) * stride_as + (j * MAX_RANK + r)[None, :] * stride_ar
    acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + k
        xt = tl.load(x + rows[:, None] * stride_x + kk[None, :], mask=(t < n)[:, None] & (kk < K)[None, :], other=0.0)
        at = tl.load(a_base + kk[:, None], mask=(kk < K)[:, None] & (r < rank)[None, :], other=0.0)
        acc += tl.dot(xt, at, input_precision=PRECISION)
    tl.store(xa + rows[:, None] * stride_xa + (j * MAX_RANK + r)[None, :], acc.to(xa.dtype.element_ty),
             mask=(t < n)[:, None] & (r < MAX_RANK)[None, :])


@triton.jit
def _sgmv_expand(xa, b, out, seg_starts, seg_lens, seg_slots, ranks, scalings, off0, off1, off2, size0, size1, size2,
                 stride_xa, stride_bs, stride_bn, stride_out, stride_rk, MAX_RANK: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    j = tl.program_id(2)
    slot = tl.load(seg_slots + seg)
    if slot < 0:
        return
    rank = tl.load(ranks + slot * stride_rk + j)
    n = tl.load(seg_lens + seg)
    size = _slice(j, size0, size1, size2)
    num_n = tl.cdiv(size, BLOCK_N)
    pid_t = pid // num_n
    pid_n = pid % num_n
    if (rank == 0) | (pid_t * BLOCK_T >= n):
        return
    start = tl.load(seg_starts + seg)
    offset = _slice(j, off0, off1, off2)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = (start + t).to(tl.int64)
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_R)
    xt = tl.load(xa + rows[:, None] * stride_xa + (j * MAX_RANK + r)[None, :],
                 mask=(t < n)[:, None] & (r < rank)[None, :], other=0.0)
    bt = tl.load(b + slot.to(tl.int64) * stride_bs + (offset + c)[None, :] * stride_bn + r[:, None],
                 mask=(r < rank)[:, None] & (c < size)[None, :], other=0.0)
    delta = tl.dot(xt, bt, input_precision=PRECISION) * tl.load(scalings + slot)
    mask = (t < n)[:, None] & (c < size)[None, :]
    ptrs = out + rows[:, None] * stride_out + (offset + c)[None, :]
    prev = tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, (prev.to(tl.float32) + delta).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _shrink_row(x, a, tok, slot, j, rank, K, stride_x, stride_as, stride_ar, MAX_RANK: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """x[tok] A_slot,j^T in float32: [BLOCK_R], zero past the rank."""
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    a_base = a + slot.to(tl.int64) * stride_as + (j * MAX_RANK + r)[:, None] * stride_ar
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + k
        xv = tl.load(x + tok.to(tl.int64) * stride_x + kk, mask=kk < K, other=0.0).to(tl.float32)
        at = tl.load(a_base + kk[None, :], mask=(r < rank)[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(at * xv[None, :], axis=1)
    return acc


@triton.jit
def _expand_row(v, b, out, tok, slot, j, pid_n, rank, scalings, offset, size, stride_bs, stride_bn, stride_out,
                BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """out[tok, offset + block pid_n] += scaling * B_slot,j v."""
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_R)
    bt = tl.load(b + slot.to(tl.int64) * stride_bs + (offset + c)[:, None] * stride_bn + r[None, :],
                 mask=(c < size)[:, None] & (r < rank)[None, :], other=0.0).to(tl.float32)
    delta = tl.sum(bt * v[None, :], axis=1) * tl.load(scalings + slot)
    ptrs = out + tok.to(tl.int64) * stride_out + offset + c
    prev = tl.load(ptrs, mask=c < size, other=0.0)
    tl.store(ptrs, (prev.to(tl.float32) + delta).to(out.dtype.element_ty), mask=c < size)


@triton.jit
def _bgmv_shrink(x, a, xa, token_slots, ranks, K, stride_x, stride_as, stride_ar, stride_xa, stride_rk,
                 MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    tok = tl.program_id(0)
    j = tl.program_id(1)
    slot = tl.load(token_slots + tok)
    if slot < 0:
        return
    rank = tl.load(ranks + slot * stride_rk + j)
    if rank == 0:
        return
    v = _shrink_row(x, a, tok, slot, j, rank, K, stride_x, stride_as, stride_ar, MAX_RANK, BLOCK_R, BLOCK_K)
    r = tl.arange(0, BLOCK_R)
    tl.store(xa + tok.to(tl.int64) * stride_xa + j * MAX_RANK + r, v, mask=r < MAX_RANK)


@triton.jit
def _bgmv_expand(x, a, xa, b, out, token_slots, ranks, scalings, off0, off1, off2, size0, size1, size2, K, stride_x,
                 stride_as, stride_ar, stride_xa, stride_bs, stride_bn, stride_out, stride_rk, MAX_RANK: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, FUSED: tl.constexpr):
    """out[tok] += scaling * B v per (token, column block, slice), v = x[tok] A^T: recomputed by each
    program when FUSED (a few tokens, no shrink launch), else read from xa (written by _bgmv_shrink)."""
    tok = tl.program_id(0)
    pid_n = tl.program_id(1)
    j = tl.program_id(2)
    slot = tl.load(token_slots + tok)
    if slot < 0:
        return
    rank = tl.load(ranks + slot * stride_rk + j)
    size = _slice(j, size0, size1, size2)
    if (rank == 0) | (pid_n * BLOCK_N >= size):
        return
    if FUSED:
        v = _shrink_row(x, a, tok, slot, j, rank, K, stride_x, stride_as, stride_ar, MAX_RANK, BLOCK_R, BLOCK_K)
    else:
        r = tl.arange(0, BLOCK_R)
        v = tl.load(xa + tok.to(tl.int64) * stride_xa + j * MAX_RANK + r, mask=r < rank, other=0.0)
    _expand_row(v, b, out, tok, slot, j, pid_n, rank, scalings, _slice(j, off0, off1, off2), size, stride_bs,
                stride_bn, stride_out, BLOCK_N, BLOCK_R)


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not be rounded to tf32 inside tl.dot; half types are exact either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _slices(weights) -> tuple[list[int], list[int]]:
    offsets = [off for off, _ in weights.slices] + [0] * (3 - weights.num_slices)
    sizes = [size for _, size in weights.slices] + [0] * (3 - weights.num_slices)
    return offsets, sizes


def _block_r(max_rank: int) -> int:
    return max(16, triton.next_power_of_2(max_rank))


def sgmv(x: torch.Tensor, weights, out: torch.Tensor, batch) -> torch.Tensor:
    """Prefill / mixed: out += per-segment LoRA update (in place); returns out."""
    a, b, ranks, big = weights.a, weights.b, weights.ranks, weights.max_rank
    n_slices, segs = weights.num_slices, batch.num_segments
    block_t = 16 if batch.max_seg_len <= 16 else 64
    block_r, prec = _block_r(big), _precision(x.dtype)
    xa = torch.empty(x.shape[0], n_slices * big, dtype=x.dtype, device=x.device)
    t_blocks = triton.cdiv(batch.max_seg_len, block_t)
    _sgmv_shrink[(t_blocks, segs, n_slices)](
        x, a, xa, batch.seg_starts, batch.seg_lens, batch.seg_slots, ranks, x.shape[1], x.stride(0), a.stride(0),
        a.stride(1), xa.stride(0), ranks.stride(0), MAX_RANK=big, BLOCK_T=block_t, BLOCK_R=block_r, BLOCK_K=64,
        PRECISION=prec)
    offsets, sizes = _slices(weights)
    block_n = 64
    n_blocks = triton.cdiv(max(sizes), block_n)
    _sgmv_expand[(t_blocks * n_blocks, segs, n_slices)](
        xa, b, out, batch.seg_starts, batch.seg_lens, batch.seg_slots, ranks, batch.scalings, *offsets, *sizes,
        xa.stride(0), b.stride(0), b.stride(1), out.stride(0), ranks.stride(0), MAX_RANK=big, BLOCK_T=block_t,
        BLOCK_N=block_n, BLOCK_R=block_r, PRECISION=prec)
    return out


def bgmv(x: torch.Tensor, weights, out: torch.Tensor, batch) -> torch.Tensor:
    """Decode: out[t] += the update of token t's slot (in place); returns out. Reads no host value
    but the token count, so it can be captured in a CUDA graph."""
    a, b, ranks, big = weights.a, weights.b, weights.ranks, weights.max_rank
    n_slices, tokens = weights.num_slices, batch.num_tokens
    block_r, block_n, block_k = _block_r(big), 64, 128
    offsets, sizes = _slices(weights)
    n_blocks = triton.cdiv(max(sizes), block_n)
    fused = tokens <= FUSED_DECODE_MAX_TOKENS
    xa = x  # the fused kernel reads no xa
    if not fused:
        xa = torch.empty(tokens, n_slices * big, dtype=torch.float32, device=x.device)
        _bgmv_shrink[(tokens, n_slices)](
            x, a, xa, batch.token_slots, ranks, x.shape[1], x.stride(0), a.stride(0), a.stride(1), xa.stride(0),
            ranks.stride(0), MAX_RANK=big, BLOCK_R=block_r, BLOCK_K=block_k)
    _bgmv_expand[(tokens, n_blocks, n_slices)](
        x, a, xa, b, out, batch.token_slots, ranks, batch.scalings, *offsets, *sizes, x.shape[1], x.stride(0),
        a.stride(0), a.stride(1), xa.stride(0), b.stride(0), b.stride(1), out.stride(0), ranks.stride(0),
        MAX_RANK=big, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k, FUSED=fused)
    return out
