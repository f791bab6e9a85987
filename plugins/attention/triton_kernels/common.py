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


@triton.jit
def last_split_arrives(Semaphore, num_splits):
    """Count this program's split in on its semaphore once every thread's stores are done (release);
    true in the program that completes the count, the last split to finish, which then sees every
    split's stores (acquire), merges them (`merge_partials`) and stores 0 back for the next launch."""
    tl.debug_barrier()
    return tl.atomic_add(Semaphore, 1, sem="acq_rel") == num_splits - 1


@triton.jit
def merge_partials(mid_o, mid_lse, out, mask, row_mask, num_active, stride_mos, BLOCK_R: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """Merge rows' split partials by their log-sum-exps (base 2) into `out`. mid_o, out: pointer tiles
    [BLOCK_R, BLOCK_D] (mid_o at split 0, splits `stride_mos` apart), mid_lse: pointers [BLOCK_R] at
    split 0 (splits adjacent); only the first num_active splits saw keys. Partials are read past L1:
    other SMs wrote them."""
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(0, num_active):
        lse = tl.load(mid_lse + s, mask=row_mask, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(mid_o + s * stride_mos, mask=mask, other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, lse)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - ref)
        w = tl.exp2(lse - ref)
        acc = acc * alpha[:, None] + part * w[:, None]
        total = total * alpha + w
        m = m_new
    tl.store(out, (acc / tl.where(total > 0.0, total, 1.0)[:, None]).to(out.dtype.element_ty), mask=mask)


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
