"""Attention-backend test inputs: the kit's AttnProblem (KV pool, request table, ForwardBatch and
float32 reference, public in `jackfield.testing.attn_problem`) plus a GPU-only allocator poisoner.

Usable on any device: the GPU kernel tests and the CPU Triton-interpreter test share it.
"""
from __future__ import annotations

import torch

from jackfield.testing.attn_problem import AttnProblem, relative_error, row_strided

__all__ = ["AttnProblem", "poison_allocator", "relative_error", "row_strided"]


def poison_allocator(device: torch.device, nbytes: int) -> None:
    """Leave NaN-filled blocks in the CUDA caching allocator, so unwritten outputs show up as NaN."""
    if device.type != "cuda":
        return
    # one large block (large-pool allocations) and a filled small-pool segment (allocations <= 1 MiB)
    junk = [torch.full((n // 4 + 1,), float("nan"), dtype=torch.float32, device=device)
            for n in [nbytes] + [(1 << 19) - 64] * 4 + [(1 << 14)] * 16]
    del junk
