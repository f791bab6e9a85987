"""Pieces shared by the decode and extend kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def scale_logits(qk, sm_scale, logit_cap, USE_CAP: tl.constexpr):
    """Scale raw q·k scores, apply the optional tanh soft-cap, and move them to log2 units (float32:
    under torch.compile, Inductor hands float scalars to the kernel as float64)."""
    if USE_CAP:
        x = (qk * (sm_scale / logit_cap)).to(tl.float32)
        # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both infinities, no libdevice needed.
        x = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
        return (x * (logit_cap * 1.4426950408889634)).to(tl.float32)
    else:
        return (qk * (sm_scale * 1.4426950408889634)).to(tl.float32)


def block_dmodel(head_dim: int) -> int:
    """Tile width over the head dimension: the next power of two (at least 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not be rounded to tf32 inside tl.dot; half types are exact either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_head_layout(x: torch.Tensor, name: str) -> None:
    if x.dim() != 3 or x.stride(-1) != 1:
        raise ValueError(f"{name} must be [rows, heads, head_dim] with a contiguous last dimension, "
                         f"got shape {tuple(x.shape)} and strides {x.stride()}")
