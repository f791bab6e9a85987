"""Grammar bitmask on the logits (Triton): -inf wherever a row's bit is 0, one pass over [B, V].

The bitmask is the SDK's format (`jackfield.sdk.grammar`): int32 words [B, ceil(V / 32)], bit
`i % 32` of word `i // 32` set when token `i` is allowed. Each program covers BLOCK tokens of one
row and stores only the disallowed ones, so a mostly-open row costs little more than its mask read.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _apply_bitmask_kernel(logits_ptr, mask_ptr, vocab, words, logits_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < vocab
    word = tl.load(mask_ptr + row * words + offs // 32, mask=inside, other=-1)
    banned = ((word >> (offs % 32)) & 1) == 0
    tl.store(logits_ptr + row * logits_stride + offs, float("-inf"), mask=inside & banned)


def apply_bitmask_triton(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [B, V] (float, last dim contiguous) in place; bitmask [B, W] int32 on the same device."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    assert logits.stride(1) == 1 and bitmask.is_contiguous() and bitmask.dtype == torch.int32
    grid = (rows, triton.cdiv(vocab, BLOCK))
    _apply_bitmask_kernel[grid](logits, bitmask, vocab, bitmask.shape[1], logits.stride(0), BLOCK=BLOCK)
