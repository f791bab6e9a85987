"""Rotary embedding applied in place on q and k (NeoX layout, cos/sin from a float32 cache) (Triton)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, cache_ptr, q_stride, k_stride, num_q_heads, num_k_heads,
                 head_dim, rot_half, cache_stride, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0)
    pos = tl.load(pos_ptr + tok)
    d = tl.arange(0, BLOCK_D)
    dmask = d < rot_half
    cos = tl.load(cache_ptr + pos * cache_stride + d, mask=dmask, other=1.0)
    sin = tl.load(cache_ptr + pos * cache_stride + rot_half + d, mask=dmask, other=0.0)
    h = tl.arange(0, BLOCK_H)
    for which in tl.static_range(2):
        if which == 0:
            base, stride, nh = q_ptr, q_stride, num_q_heads
        else:
            base, stride, nh = k_ptr, k_stride, num_k_heads
        m = (h[:, None] < nh) & dmask[None, :]
        p1 = base + tok * stride + h[:, None] * head_dim + d[None, :]
        x1 = tl.load(p1, mask=m, other=0.0)
        x2 = tl.load(p1 + rot_half, mask=m, other=0.0)
        x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
        tl.store(p1, (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype), mask=m)
        tl.store(p1 + rot_half, (x2f * cos[None, :] + x1f * sin[None, :]).to(x1.dtype), mask=m)


def rope_inplace(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                 head_dim: int, rotary_dim: int) -> None:
    """q: [T, Hq*D], k: [T, Hk*D] (row-contiguous heads; may be views into a fused qkv tensor)."""
    t = q.shape[0]
    if t == 0:
        return
    hq, hk = q.shape[1] // head_dim, k.shape[1] // head_dim
    half = rotary_dim // 2
    _rope_kernel[(t,)](q, k, positions, cos_sin_cache, q.stride(0), k.stride(0), hq, hk, head_dim, half,
                       cos_sin_cache.stride(0), BLOCK_H=triton.next_power_of_2(max(hq, hk)),
                       BLOCK_D=triton.next_power_of_2(half), num_warps=4)
