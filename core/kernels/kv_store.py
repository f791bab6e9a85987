"""Write one forward's K and V rows into the paged pool at their slots, in one launch (Triton).

Replaces two indexed copies (`k_buffer[loc] = k; v_buffer[loc] = v`) per layer: at batch-1 decode
each costs a few microseconds of launch-bound kernel time, 64 per step on a 32-layer model.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, loc_ptr, k_cache_ptr, v_cache_ptr, k_stride, v_stride, row_size,
                     BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # jackfield.kernels: let dependents launch, then wait for the previous grid before any load or store
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    tok = tl.program_id(0)
    slot = tl.load(loc_ptr + tok).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < row_size
    k = tl.load(k_ptr + tok * k_stride + offs, mask=mask)
    v = tl.load(v_ptr + tok * v_stride + offs, mask=mask)
    tl.store(k_cache_ptr + slot * row_size + offs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + slot * row_size + offs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """k_cache, v_cache: [slots, kv_heads, head_dim] contiguous; loc: [T] slot ids; k, v: [T, kv_heads*head_dim]
    with unit stride along the row (views into a fused qkv tensor are fine)."""
    t = loc.shape[0]
    if t == 0:
        return
    row = k_cache.shape[1] * k_cache.shape[2]
    _store_kv_kernel[(t,)](k, v, loc, k_cache, v_cache, k.stride(0), v.stride(0), row,
                           BLOCK=triton.next_power_of_2(row), num_warps=4, **pdl_kwargs(k))
