"""moe_align_block_size: group the (token, slot) pairs by expert, each expert's run padded to a
multiple of the GEMM's BLOCK_M, so that every M-block of the grouped GEMMs belongs to one expert.

Outputs, all of sizes fixed by (pairs, experts, BLOCK_M) so the step is CUDA-graph safe:
- sorted_ids [pairs + E * (BLOCK_M - 1)] int32: pair indices (t * top_k + j) by expert, padding = pairs;
- expert_ids [that / BLOCK_M] int32: the expert of each M-block, -1 past the used blocks;
- num_padded [1] int32: the used length of sorted_ids.
Two launches: one program counts the pairs per expert (histogram), lays out the padded runs and
fills the padding; then one program per chunk of pairs places each pair with an atomic cursor (the
order inside an expert's run is arbitrary, which no result depends on).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _layout_kernel(TopkIds, SortedIds, ExpertIds, NumPadded, Cursor, num_pairs, num_experts, max_padded,
                   BLOCK_M: tl.constexpr, BINS: tl.constexpr, CHUNK: tl.constexpr):
    counts = tl.zeros((BINS,), tl.int32)
    for start in range(0, num_pairs, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(TopkIds + offs, mask=offs < num_pairs, other=num_experts)  # padding lands in bin E
        counts += tl.histogram(ids, BINS)
    bins = tl.arange(0, BINS)
    counts = tl.where(bins < num_experts, counts, 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    starts = ends - padded
    tl.store(Cursor + bins, starts, mask=bins < num_experts)
    total = tl.sum(padded, 0)
    tl.store(NumPadded, total)
    for start in range(0, max_padded, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(SortedIds + offs, tl.zeros((CHUNK,), tl.int32) + num_pairs, mask=offs < max_padded)
    num_blocks = max_padded // BLOCK_M
    for start in range(0, num_blocks, CHUNK):
        blocks = start + tl.arange(0, CHUNK)
        first = blocks * BLOCK_M
        expert = tl.sum((ends[None, :] <= first[:, None]).to(tl.int32), 1)  # experts whose run ends before
        expert = tl.where(first < total, expert, -1)
        tl.store(ExpertIds + blocks, expert, mask=blocks < num_blocks)


@triton.jit
def _place_kernel(TopkIds, SortedIds, Cursor, num_pairs, CHUNK: tl.constexpr):
    offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    mask = offs < num_pairs
    ids = tl.load(TopkIds + offs, mask=mask, other=0)
    pos = tl.atomic_add(Cursor + ids, 1, mask=mask)
    tl.store(SortedIds + pos, offs, mask=mask)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int,
                         block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids, expert_ids, num_padded) of topk_ids [T, k] int32 (see the module doc)."""
    num_pairs = topk_ids.numel()
    max_padded = num_pairs + num_experts * (block_m - 1)
    max_padded = triton.cdiv(max_padded, block_m) * block_m
    dev = topk_ids.device
    sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(max_padded // block_m, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=dev)
    flat = topk_ids.reshape(-1)
    _layout_kernel[(1,)](flat, sorted_ids, expert_ids, num_padded, cursor, num_pairs, num_experts, max_padded,
                         BLOCK_M=block_m, BINS=triton.next_power_of_2(num_experts + 1), CHUNK=1024, num_warps=4)
    chunk = 256
    _place_kernel[(triton.cdiv(max(num_pairs, 1), chunk),)](flat, sorted_ids, cursor, num_pairs, CHUNK=chunk,
                                                            num_warps=4)
    return sorted_ids, expert_ids, num_padded
