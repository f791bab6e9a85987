"""Triton kernels of the `triton` LoRA backend (Punica / S-LoRA style), each adding into the base
GEMM's output in place, so no separate add runs.

- SGMV (prefill, mixed): segments of consecutive tokens sharing a slot. `shrink` computes float32
  partials of xa = x A_s^T per (token block x K chunk, segment, slice), K split only while the grid
  is small; `expand` sums them and computes out += scaling_s * xa_j B_s,j^T per (token block x
  column block, segment, slice). A program whose segment runs the base model (slot -1)
  or whose slot does not adapt the slice (rank 0) returns at once.
Decode batches grouped by slot (`LoRABatch.tiles`) run the same kernels with one tile per segment:
a program's rows are `order[start + t]` (INDIRECT), so each tile reads its adapter once; small
decode batches run the BGMV kernels of `bgmv.py`.
PDL (jackfield.sdk.pdl_kwargs), as in `bgmv.py`: the segment, slot and rank tensors are written
before the forward's first kernel, so programs read them before `gdc_wait`; the expand loads its B
tile before it too. Every program waits, also one with nothing to do.
Slices of a fused layer (q/k/v, gate/up) are up to three: slice j's A rows start at j * MAX_RANK and
its output columns at offset_j.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs

# Prefill / mixed: the shrink splits K (each split at least this many columns) until the grid has
# about this many programs, so a short prompt's few token blocks do not each walk all of K alone.
PREFILL_PROGRAMS = 256
PREFILL_MIN_SPLIT_K = 256
PREFILL_BLOCK_K = 64


@triton.jit
def _slice(j, v0, v1, v2):
    return tl.where(j == 0, v0, tl.where(j == 1, v1, v2))


@triton.jit
def _rows(seg_starts, seg, order, t, n, INDIRECT: tl.constexpr):
    """The token rows of positions t of a segment: consecutive, or looked up in `order` (tiles)."""
    pos = tl.load(seg_starts + seg) + t
    if INDIRECT:
        pos = tl.load(order + pos, mask=t < n, other=0)
    return pos.to(tl.int64)


@triton.jit
def _sgmv_shrink(x, a, xa, seg_starts, seg_lens, seg_slots, order, ranks, K, K_SPLIT, num_splits, stride_x,
                 stride_as, stride_ar, stride_xs, stride_xa, stride_rk, MAX_RANK: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                 INDIRECT: tl.constexpr, PDL: tl.constexpr):
    """Program (token block x K chunk, segment, slice) writes the float32 partial x A^T over its
    K_SPLIT columns of K to xa[split] (the expand sums the splits)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid_t = tl.program_id(0) // num_splits
    split = tl.program_id(0) % num_splits
    seg = tl.program_id(1)
    j = tl.program_id(2)
    slot = tl.load(seg_slots + seg)
    rank = tl.load(ranks + tl.maximum(slot, 0) * stride_rk + j)
    n = tl.load(seg_lens + seg)
    if PDL:  # x is the kernel before's output
        tl.extra.cuda.gdc_wait()
    if (slot < 0) | (rank == 0) | (pid_t * BLOCK_T >= n):
        return
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = _rows(seg_starts, seg, order, t, n, INDIRECT)
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    a_base = a + slot.to(tl.int64) * stride_as + (j * MAX_RANK + r)[None, :] * stride_ar
    acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, tl.minimum(K, (split + 1) * K_SPLIT), BLOCK_K):
        kk = k0 + k
        xt = tl.load(x + rows[:, None] * stride_x + kk[None, :], mask=(t < n)[:, None] & (kk < K)[None, :], other=0.0)
        at = tl.load(a_base + kk[:, None], mask=(kk < K)[:, None] & (r < rank)[None, :], other=0.0)
        acc += tl.dot(xt, at, input_precision=PRECISION)
    tl.store(xa + split * stride_xs + rows[:, None] * stride_xa + (j * MAX_RANK + r)[None, :], acc,
             mask=(t < n)[:, None] & (r < MAX_RANK)[None, :])


@triton.jit
def _sgmv_expand(xa, b, out, seg_starts, seg_lens, seg_slots, order, ranks, scalings, off0, off1, off2, size0, size1,
                 size2, num_splits, stride_xs, stride_xa, stride_bs, stride_bn, stride_out, stride_rk,
                 MAX_RANK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                 PRECISION: tl.constexpr, INDIRECT: tl.constexpr, PDL: tl.constexpr):
    """Program (token block x column block, segment, slice) sums the shrink's partials and adds
    scaling * xa B^T into out. With PDL it loads its B tile before waiting for the shrink."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    j = tl.program_id(2)
    slot = tl.load(seg_slots + seg)
    rank = tl.load(ranks + tl.maximum(slot, 0) * stride_rk + j)
    n = tl.load(seg_lens + seg)
    size = _slice(j, size0, size1, size2)
    num_n = tl.cdiv(size, BLOCK_N)
    pid_t = pid // num_n
    pid_n = pid % num_n
    if (slot < 0) | (rank == 0) | (pid_t * BLOCK_T >= n):
        if PDL:  # every program waits: the grid must not complete before the kernels it follows
            tl.extra.cuda.gdc_wait()
        return
    offset = _slice(j, off0, off1, off2)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = _rows(seg_starts, seg, order, t, n, INDIRECT)
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_R)
    bt = tl.load(b + slot.to(tl.int64) * stride_bs + (offset + c)[None, :] * stride_bn + r[:, None],
                 mask=(r < rank)[:, None] & (c < size)[None, :], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    xt = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for sp in range(num_splits):
        xt += tl.load(xa + sp * stride_xs + rows[:, None] * stride_xa + (j * MAX_RANK + r)[None, :],
                      mask=(t < n)[:, None] & (r < rank)[None, :], other=0.0)
    delta = tl.dot(xt.to(bt.dtype), bt, input_precision=PRECISION) * tl.load(scalings + slot)
    mask = (t < n)[:, None] & (c < size)[None, :]
    ptrs = out + rows[:, None] * stride_out + (offset + c)[None, :]
    prev = tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, (prev.to(tl.float32) + delta).to(out.dtype.element_ty), mask=mask)


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
    block_t = 16 if batch.max_seg_len <= 16 else 64
    t_blocks = triton.cdiv(batch.max_seg_len, block_t)
    return _launch(x, weights, out, batch.seg_starts, batch.seg_lens, batch.seg_slots, None, batch.scalings,
                   batch.num_segments, block_t, t_blocks, t_blocks * batch.num_segments, block_n=64)


def grouped(x: torch.Tensor, weights, out: torch.Tensor, batch) -> torch.Tensor:
    """Decode grouped by slot: one segment per tile of `batch.tiles`; out += the updates in place.
    The grid holds every tile the batch could have; about cdiv(tokens, T) of them have work."""
    tiles = batch.tiles
    return _launch(x, weights, out, tiles.starts, tiles.lens, tiles.slots, tiles.order, batch.scalings,
                   tiles.num_tiles, tiles.size, 1, triton.cdiv(batch.num_tokens, tiles.size), block_n=128)


def _launch(x, weights, out, starts, lens, slots, order, scalings, segs: int, block_t: int, t_blocks: int,
            busy_blocks: int, block_n: int) -> torch.Tensor:
    """The shrink and expand launches; `busy_blocks`: token blocks with work (sizes the K split)."""
    a, b, ranks, big = weights.a, weights.b, weights.ranks, weights.max_rank
    n_slices, k = weights.num_slices, x.shape[1]
    block_r, prec = _block_r(big), _precision(x.dtype)
    # split K while the busy programs are fewer than PREFILL_PROGRAMS (a short prompt: a few token blocks)
    splits = max(1, min(triton.cdiv(k, PREFILL_MIN_SPLIT_K), PREFILL_PROGRAMS // (busy_blocks * n_slices)))
    k_split = triton.cdiv(triton.cdiv(k, splits), PREFILL_BLOCK_K) * PREFILL_BLOCK_K
    splits = triton.cdiv(k, k_split)
    indirect, pdl = order is not None, pdl_kwargs(x)
    order = starts if order is None else order
    xa = torch.empty(splits, x.shape[0], n_slices * big, dtype=torch.float32, device=x.device)
    _sgmv_shrink[(t_blocks * splits, segs, n_slices)](
        x, a, xa, starts, lens, slots, order, ranks, k, k_split, splits, x.stride(0), a.stride(0), a.stride(1),
        xa.stride(0), xa.stride(1), ranks.stride(0), MAX_RANK=big, BLOCK_T=block_t, BLOCK_R=block_r,
        BLOCK_K=PREFILL_BLOCK_K, PRECISION=prec, INDIRECT=indirect, **pdl)
    offsets, sizes = _slices(weights)
    n_blocks = triton.cdiv(max(sizes), block_n)
    _sgmv_expand[(t_blocks * n_blocks, segs, n_slices)](
        xa, b, out, starts, lens, slots, order, ranks, scalings, *offsets, *sizes, splits, xa.stride(0),
        xa.stride(1), b.stride(0), b.stride(1), out.stride(0), ranks.stride(0), MAX_RANK=big, BLOCK_T=block_t,
        BLOCK_N=block_n, BLOCK_R=block_r, PRECISION=prec, INDIRECT=indirect, **pdl)
    return out
