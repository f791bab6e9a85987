"""Write one forward's K and V rows into the paged pool at their slots, in one launch (Triton).

Replaces two indexed copies (`k_buffer[loc] = k; v_buffer[loc] = v`) per layer: at batch-1 decode
each costs a few microseconds of launch-bound kernel time, 64 per step on a 32-layer model.
An FP8 pool stores the rows times the inverse scales, saturated to the FP8 range.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs



@triton.jit
def quantize_store(ptr, x, inv_scale, mask, FP8: tl.constexpr):
    """Store x at ptr in the pointer's dtype; for FP8, x * inv_scale saturated to +-448."""
    if FP8:
        y = tl.clamp(x.to(tl.float32) * inv_scale, -448.0, 448.0)
        tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, loc_ptr, k_cache_ptr, v_cache_ptr, k_stride, v_stride, row_size,
                     k_inv_scale, v_inv_scale, FP8: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # jackfield.kernels: let dependents launch, then wait for the previous grid before any load or store
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    tok = tl.program_id(0)
    slot = tl.load(loc_ptr + tok).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < row_size
    k = tl.load(k_ptr + tok * k_stride + offs, mask=mask)
    v = tl.load(v_ptr + tok * v_stride + offs, mask=mask)
    quantize_store(k_cache_ptr + slot * row_size + offs, k, k_inv_scale, mask, FP8)
    quantize_store(v_cache_ptr + slot * row_size + offs, v, v_inv_scale, mask, FP8)


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype == torch.float8_e4m3fn


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             k_inv_scale: float = 1.0, v_inv_scale: float = 1.0) -> None:
    """k_cache, v_cache: [slots, kv_heads, head_dim] contiguous; loc: [T] slot ids; k, v: [T, kv_heads*head_dim]
    with unit stride along the row (views into a fused qkv tensor are fine). An FP8 cache gets
    k * k_inv_scale and v * v_inv_scale."""
    t = loc.shape[0]
    if t == 0:
        return
    row = k_cache.shape[1] * k_cache.shape[2]
    _store_kv_kernel[(t,)](k, v, loc, k_cache, v_cache, k.stride(0), v.stride(0), row, k_inv_scale, v_inv_scale,
                           FP8=is_fp8(k_cache), BLOCK=triton.next_power_of_2(row), num_warps=4, **pdl_kwargs(k))
