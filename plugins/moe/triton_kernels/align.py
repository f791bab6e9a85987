"""moe_align_block_size: group the (token, slot) pairs by expert, each expert's run padded to a
multiple of the GEMM's BLOCK_M, so that every M-block of the grouped GEMMs belongs to one expert.

Outputs, all of sizes fixed by (pairs, experts, BLOCK_M) so the step is CUDA-graph safe:
- sorted_ids [pairs + E * (BLOCK_M - 1), rounded up to BLOCK_M] int32: pair indices
  (t * top_k + j) by expert, padding = pairs;
- expert_ids [that / BLOCK_M] int32: the expert of each M-block, -1 past the used blocks;
- num_padded [1] int32: the used length of sorted_ids.
Two launches: one program counts the pairs per expert (histogram), lays out the padded runs (each
expert's start and end) and fills the padding; then a grid places each pair with an atomic cursor
per expert (the order inside an expert's run is arbitrary, which no result depends on) and labels
the M-blocks with their expert.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PAIRS_PER_PROGRAM, BLOCKS_PER_PROGRAM = 256, 16


@triton.jit
def _layout_kernel(TopkIds, SortedIds, NumPadded, Cursor, Ends, num_pairs, num_experts, max_padded,
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
    tl.store(Cursor + bins, ends - padded, mask=bins < num_experts)
    tl.store(Ends + bins, ends, mask=bins < num_experts)
    tl.store(NumPadded, tl.sum(padded, 0))
    for start in range(0, max_padded, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(SortedIds + offs, tl.zeros((CHUNK,), tl.int32) + num_pairs, mask=offs < max_padded)


@triton.jit
def _place_kernel(TopkIds, SortedIds, ExpertIds, NumPadded, Cursor, Ends, num_pairs, num_experts, num_blocks,
                  BLOCK_M: tl.constexpr, BINS: tl.constexpr, PAIRS: tl.constexpr, BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * PAIRS + tl.arange(0, PAIRS)
    mask = offs < num_pairs
    ids = tl.load(TopkIds + offs, mask=mask, other=0)
    pos = tl.atomic_add(Cursor + ids, 1, mask=mask)
    tl.store(SortedIds + pos, offs, mask=mask)
    blocks = pid * BLOCKS + tl.arange(0, BLOCKS)
    first = blocks * BLOCK_M
    bins = tl.arange(0, BINS)
    ends = tl.load(Ends + bins, mask=bins < num_experts, other=2147483647)
    expert = tl.sum((ends[None, :] <= first[:, None]).to(tl.int32), 1)  # experts whose run ends before
    expert = tl.where(first < tl.load(NumPadded), expert, -1)
    tl.store(ExpertIds + blocks, expert, mask=blocks < num_blocks)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int,
                         block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids, expert_ids, num_padded) of topk_ids [T, k] int32 (see the module doc)."""
    num_pairs = topk_ids.numel()
    max_padded = triton.cdiv(num_pairs + num_experts * (block_m - 1), block_m) * block_m
    num_blocks = max_padded // block_m
    dev = topk_ids.device
    sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    scratch = torch.empty(2, num_experts, dtype=torch.int32, device=dev)  # per-expert cursor and run end
    flat, bins = topk_ids.reshape(-1), triton.next_power_of_2(num_experts + 1)
    _layout_kernel[(1,)](flat, sorted_ids, num_padded, scratch[0], scratch[1], num_pairs, num_experts, max_padded,
                         BLOCK_M=block_m, BINS=bins, CHUNK=1024, num_warps=4)
    grid = max(triton.cdiv(num_pairs, PAIRS_PER_PROGRAM), triton.cdiv(num_blocks, BLOCKS_PER_PROGRAM))
    _place_kernel[(grid,)](flat, sorted_ids, expert_ids, num_padded, scratch[0], scratch[1], num_pairs, num_experts,
                           num_blocks, BLOCK_M=block_m, BINS=bins, PAIRS=PAIRS_PER_PROGRAM,
                           BLOCKS=BLOCKS_PER_PROGRAM, num_warps=4)
    return sorted_ids, expert_ids, num_padded
