"""BGMV: the decode kernels of the `triton` LoRA backend (one token per row, any slot per token),
adding scaling_s * B_s (A_s x) into the base GEMV's output in place.

Batch-1 decode is latency-bound (a rank-16 adapter is ~0.5% of an 8B model's bytes), so what counts
is kernels per layer and loads per program. Each wrapped layer runs two launches: split-K shrink
programs (slice j, SPLIT_K columns of K) write the float32 partial A_j x of their chunk to
xa[split, tok]; then expand programs (BLOCK_N output columns across the layer's concatenated
slices) sum the partials and add their update.

Prologues let a wrapped layer keep the base GEMV's fused norm / activation: PROLOGUE 1, x =
RMSNorm(h) * w: a shrink program sums A (h * w) over its chunk and, on slice 0, the squares of h;
the expand multiplies v by rsqrt(mean(h^2) + eps) (a per-token scalar, so it commutes with A).
PROLOGUE 2, x = silu(gate) * up for h = [gate | up], computed per chunk.

PDL (jackfield.sdk.pdl_kwargs): every program loads its weights (A or B) before `gdc_wait`, then
the input and the base output. The slot, rank and scaling tensors are written only before the
forward's first kernel (the pool's copies, the graph's slot buffer), so they are read before the
wait too. Every program waits, so the grid never completes before the kernel it follows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs

NONE, RMSNORM, SILU_MUL = 0, 1, 2   # prologues
SPLIT_K = tl.constexpr(256)  # columns of K per shrink program: one load of A (K = 14336: 56 short programs)
BLOCK_N = tl.constexpr(256)  # output columns per expand program


@triton.jit
def _shrink(x, a, xa, w_norm, slot, rank, tok, j, split, K, stride_x, stride_as, stride_ar, stride_xs, stride_xa,
            SQ_COL, MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr, PROLOGUE: tl.constexpr, PDL: tl.constexpr):
    """xa[split, tok, j * MAX_RANK + r] = sum over this program's chunk of K of A[slot, j, r, k] x[k]."""
    r = tl.arange(0, BLOCK_R)
    k = split * SPLIT_K + tl.arange(0, SPLIT_K)
    kmask = k < K
    at = tl.load(a + slot.to(tl.int64) * stride_as + (j * MAX_RANK + r)[:, None] * stride_ar + k[None, :],
                 mask=(r < rank)[:, None] & kmask[None, :], other=0.0)
    if PROLOGUE == 1:
        wn = tl.load(w_norm + k, mask=kmask, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
    row = x + tok.to(tl.int64) * stride_x
    xv = tl.load(row + k, mask=kmask, other=0.0).to(tl.float32)
    dst = xa + split * stride_xs + tok.to(tl.int64) * stride_xa
    if PROLOGUE == 1:
        if j == 0:
            tl.store(dst + SQ_COL, tl.sum(xv * xv, axis=0))
        xv = xv * wn
    if PROLOGUE == 2:
        up = tl.load(row + K + k, mask=kmask, other=0.0).to(tl.float32)
        xv = (xv / (1.0 + tl.exp(-xv)) * up).to(x.dtype.element_ty).to(tl.float32)
    acc = tl.sum(at.to(tl.float32) * xv[None, :], axis=1)
    tl.store(dst + j * MAX_RANK + r, acc, mask=r < MAX_RANK)


@triton.jit
def _load_tile(b, out, slot, rank0, rank1, rank2, tok, tile, N, off1, off2, stride_bs, stride_bn, stride_out,
               BLOCK_R: tl.constexpr, PDL: tl.constexpr):
    """An expand program's B tile (columns of any slice) and base output, B before the PDL wait."""
    c = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_R)
    jc = (c >= off1).to(tl.int32) + (c >= off2).to(tl.int32)  # the slice of each column
    rank_c = tl.where(jc == 0, rank0, tl.where(jc == 1, rank1, rank2))
    bt = tl.load(b + slot.to(tl.int64) * stride_bs + c[:, None] * stride_bn + r[None, :],
                 mask=(c < N)[:, None] & (r[None, :] < rank_c[:, None]), other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    prev = tl.load(out + tok.to(tl.int64) * stride_out + c, mask=c < N, other=0.0)
    return c, jc, bt, prev


@triton.jit
def _slice_v(xa_tok, sp, num_splits, col0, rank, stride_xs, BLOCK_R: tl.constexpr):
    r = tl.arange(0, BLOCK_R)
    parts = tl.load(xa_tok + sp[:, None] * stride_xs + col0 + r[None, :],
                    mask=(sp < num_splits)[:, None] & (r < rank)[None, :], other=0.0)
    return tl.sum(parts, axis=0)


@triton.jit
def _add_update(xa, out, c, jc, bt, prev, scaling, tok, rank0, rank1, rank2, num_splits, K, N, eps, stride_xs,
                stride_xa, stride_out, SQ_COL, MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_S: tl.constexpr, NUM_SLICES: tl.constexpr, PROLOGUE: tl.constexpr):
    """out[tok, c] = prev + scaling * B v, v the sum of the shrink partials of each column's slice."""
    sp = tl.arange(0, BLOCK_S)
    xa_tok = xa + tok.to(tl.int64) * stride_xa
    v = _slice_v(xa_tok, sp, num_splits, 0, rank0, stride_xs, BLOCK_R)
    vc = tl.where(jc[:, None] == 0, v[None, :], 0.0)
    if NUM_SLICES > 1:
        v = _slice_v(xa_tok, sp, num_splits, MAX_RANK, rank1, stride_xs, BLOCK_R)
        vc = tl.where(jc[:, None] == 1, v[None, :], vc)
    if NUM_SLICES > 2:
        v = _slice_v(xa_tok, sp, num_splits, 2 * MAX_RANK, rank2, stride_xs, BLOCK_R)
        vc = tl.where(jc[:, None] == 2, v[None, :], vc)
    delta = tl.sum(bt.to(tl.float32) * vc, axis=1) * scaling
    if PROLOGUE == 1:
        sq = tl.sum(tl.load(xa_tok + sp * stride_xs + SQ_COL, mask=sp < num_splits, other=0.0), axis=0)
        delta = delta * tl.rsqrt((sq / K + eps).to(tl.float32))
    tl.store(out + tok.to(tl.int64) * stride_out + c, (prev.to(tl.float32) + delta).to(out.dtype.element_ty),
             mask=c < N)


@triton.jit
def _ranks(ranks, slot, stride_rk, NUM_SLICES: tl.constexpr):
    row = ranks + slot * stride_rk
    rank0 = tl.load(row)
    rank1 = rank0 * 0
    rank2 = rank0 * 0
    if NUM_SLICES > 1:
        rank1 = tl.load(row + 1)
    if NUM_SLICES > 2:
        rank2 = tl.load(row + 2)
    return rank0, rank1, rank2


@triton.jit
def _bgmv_shrink(x, a, xa, w_norm, token_slots, ranks, K, num_splits, stride_x, stride_as, stride_ar, stride_xs,
                 stride_xa, stride_rk, SQ_COL, MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr,
                 NUM_SLICES: tl.constexpr, PROLOGUE: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tok = tl.program_id(0)
    j = tl.program_id(1) // num_splits
    slot = tl.load(token_slots + tok)
    if slot >= 0:
        rank = tl.load(ranks + slot * stride_rk + j)
        _shrink(x, a, xa, w_norm, slot, rank, tok, j, tl.program_id(1) % num_splits, K, stride_x, stride_as,
                stride_ar, stride_xs, stride_xa, SQ_COL, MAX_RANK, BLOCK_R, PROLOGUE, PDL)
    else:
        if PDL:
            tl.extra.cuda.gdc_wait()


@triton.jit
def _bgmv_expand(b, out, xa, token_slots, ranks, scalings, K, N, off1, off2, num_splits, eps, stride_bs, stride_bn,
                 stride_out, stride_xs, stride_xa, stride_rk, SQ_COL, MAX_RANK: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_S: tl.constexpr, NUM_SLICES: tl.constexpr, PROLOGUE: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tok = tl.program_id(0)
    slot = tl.load(token_slots + tok)
    if slot >= 0:
        rank0, rank1, rank2 = _ranks(ranks, slot, stride_rk, NUM_SLICES)
        c, jc, bt, prev = _load_tile(b, out, slot, rank0, rank1, rank2, tok, tl.program_id(1), N, off1, off2,
                                     stride_bs, stride_bn, stride_out, BLOCK_R, PDL)
        _add_update(xa, out, c, jc, bt, prev, tl.load(scalings + slot), tok, rank0, rank1, rank2, num_splits, K, N,
                    eps, stride_xs, stride_xa, stride_out, SQ_COL, MAX_RANK, BLOCK_R, BLOCK_S, NUM_SLICES, PROLOGUE)
    else:
        if PDL:
            tl.extra.cuda.gdc_wait()


def decode(x: torch.Tensor, weights, out: torch.Tensor, batch, prologue: int = NONE,
           norm_weight: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """out[t] += the update of token t's slot on the layer input p(x) (p: the prologue); returns out.
    Two launches whatever the slices; reads no host value but the token count, so it can be captured
    in a CUDA graph."""
    a, b, ranks, big = weights.a, weights.b, weights.ranks, weights.max_rank
    n_slices, tokens, k = weights.num_slices, batch.num_tokens, a.shape[2]
    n = out.shape[1]
    offsets = [off for off, _ in weights.slices[1:]] + [n] * (3 - n_slices)
    splits, tiles = triton.cdiv(k, SPLIT_K.value), triton.cdiv(n, BLOCK_N.value)
    sq_col = n_slices * big
    xa = torch.empty(splits, tokens, sq_col + 1, dtype=torch.float32, device=x.device)
    w_norm = norm_weight if norm_weight is not None else x
    common = dict(MAX_RANK=big, BLOCK_R=max(16, triton.next_power_of_2(big)), NUM_SLICES=n_slices,
                  PROLOGUE=prologue, **pdl_kwargs(x))
    _bgmv_shrink[(tokens, n_slices * splits)](
        x, a, xa, w_norm, batch.token_slots, ranks, k, splits, x.stride(0), a.stride(0), a.stride(1),
        xa.stride(0), xa.stride(1), ranks.stride(0), sq_col, **common)
    _bgmv_expand[(tokens, tiles)](
        b, out, xa, batch.token_slots, ranks, batch.scalings, k, n, *offsets[:2], splits, eps, b.stride(0),
        b.stride(1), out.stride(0), xa.stride(0), xa.stride(1), ranks.stride(0), sq_col,
        BLOCK_S=max(16, triton.next_power_of_2(splits)), **common)
    return out
