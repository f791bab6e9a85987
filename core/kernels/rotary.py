"""Rotary embedding applied in place on q and k (NeoX layout, cos/sin from a float32 cache) (Triton).

`rope_inplace_and_store` also writes the rotated k and the v rows into the paged KV pool at their
slots, in the same launch (one kernel fewer per layer than rope + KVPool.set_kv), and, given
`QKNorm` weights (Qwen3), first applies the per-head RMSNorm to q and k in place (two kernels
fewer again: the norm needs the whole head, which the full-rotary kernel holds as its two halves).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs
from jackfield.kernels.kv_store import is_fp8, quantize_store


@dataclass(frozen=True)
class QKNorm:
    """Per-head RMSNorm weights of q and k ([head_dim] each) and their epsilon."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float


@triton.jit
def _head_rmsnorm(x1, x2, w_ptr, d, dmask, rot_half, head_dim, eps):
    """RMSNorm of each head row given as its two halves [BLOCK_H, BLOCK_D]; the same rounding as
    jackfield.kernels.norm (normed row to the storage dtype, then times the weight)."""
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    inv = tl.rsqrt((tl.sum(x1f * x1f, 1) + tl.sum(x2f * x2f, 1)) / head_dim + eps)
    w1 = tl.load(w_ptr + d, mask=dmask, other=0.0)
    w2 = tl.load(w_ptr + rot_half + d, mask=dmask, other=0.0)
    y1 = (x1f * inv[:, None]).to(x1.dtype) * w1[None, :]
    y2 = (x2f * inv[:, None]).to(x1.dtype) * w2[None, :]
    return y1.to(x1.dtype), y2.to(x1.dtype)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, cache_ptr, q_stride, k_stride, num_q_heads, num_k_heads,
                 head_dim, rot_half, cache_stride, v_ptr, v_stride, loc_ptr, k_cache_ptr, v_cache_ptr,
                 k_inv_scale, v_inv_scale, qw_ptr, kw_ptr, eps, STORE: tl.constexpr, FP8: tl.constexpr,
                 QK_NORM: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_HD: tl.constexpr,
                 PDL: tl.constexpr):
    if PDL:  # jackfield.kernels: let dependents launch, then wait for the previous grid before any load or store
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    tok = tl.program_id(0)
    pos = tl.load(pos_ptr + tok)
    d = tl.arange(0, BLOCK_D)
    dmask = d < rot_half
    cos = tl.load(cache_ptr + pos * cache_stride + d, mask=dmask, other=1.0)
    sin = tl.load(cache_ptr + pos * cache_stride + rot_half + d, mask=dmask, other=0.0)
    h = tl.arange(0, BLOCK_H)
    for which in tl.static_range(2):
        if which == 0:
            base, stride, nh, nw_ptr = q_ptr, q_stride, num_q_heads, qw_ptr
        else:
            base, stride, nh, nw_ptr = k_ptr, k_stride, num_k_heads, kw_ptr
        m = (h[:, None] < nh) & dmask[None, :]
        p1 = base + tok * stride + h[:, None] * head_dim + d[None, :]
        x1 = tl.load(p1, mask=m, other=0.0)
        x2 = tl.load(p1 + rot_half, mask=m, other=0.0)
        if QK_NORM:  # rot_half * 2 == head_dim here: x1, x2 are the whole head
            x1, x2 = _head_rmsnorm(x1, x2, nw_ptr, d, dmask, rot_half, head_dim, eps)
        x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
        y1 = (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype)
        y2 = (x2f * cos[None, :] + x1f * sin[None, :]).to(x1.dtype)
        tl.store(p1, y1, mask=m)
        tl.store(p1 + rot_half, y2, mask=m)
        if STORE and which == 1:  # rotary_dim == head_dim here: the rotated halves are the whole row
            row = tl.load(loc_ptr + tok).to(tl.int64) * num_k_heads * head_dim
            c1 = k_cache_ptr + row + h[:, None] * head_dim + d[None, :]
            quantize_store(c1, y1, k_inv_scale, m, FP8)
            quantize_store(c1 + rot_half, y2, k_inv_scale, m, FP8)
    if STORE:
        row = tl.load(loc_ptr + tok).to(tl.int64) * num_k_heads * head_dim
        dv = tl.arange(0, BLOCK_HD)
        mv = (h[:, None] < num_k_heads) & (dv[None, :] < head_dim)
        off = h[:, None] * head_dim + dv[None, :]
        v = tl.load(v_ptr + tok * v_stride + off, mask=mv)
        quantize_store(v_cache_ptr + row + off, v, v_inv_scale, mv, FP8)


def _launch(positions, q, k, cos_sin_cache, head_dim, rotary_dim, v=None, loc=None, k_cache=None, v_cache=None,
            k_inv_scale=1.0, v_inv_scale=1.0, qk_norm: QKNorm | None = None):
    t = q.shape[0]
    if t == 0:
        return
    hq, hk = q.shape[1] // head_dim, k.shape[1] // head_dim
    half = rotary_dim // 2
    store = v is not None
    _rope_kernel[(t,)](q, k, positions, cos_sin_cache, q.stride(0), k.stride(0), hq, hk, head_dim, half,
                       cos_sin_cache.stride(0), v if store else q, v.stride(0) if store else 0,
                       loc if store else positions, k_cache if store else q, v_cache if store else q,
                       k_inv_scale, v_inv_scale, qk_norm.q_weight if qk_norm else q, qk_norm.k_weight if qk_norm else q,
                       qk_norm.eps if qk_norm else 0.0, STORE=store, FP8=store and is_fp8(k_cache),
                       QK_NORM=qk_norm is not None,
                       BLOCK_H=triton.next_power_of_2(max(hq, hk)),
                       BLOCK_D=triton.next_power_of_2(half), BLOCK_HD=triton.next_power_of_2(head_dim), num_warps=4,
                       **pdl_kwargs(q))


def rope_inplace(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                 head_dim: int, rotary_dim: int) -> None:
    """q: [T, Hq*D], k: [T, Hk*D] (row-contiguous heads; may be views into a fused qkv tensor)."""
    _launch(positions, q, k, cos_sin_cache, head_dim, rotary_dim)


def rope_inplace_and_store(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cos_sin_cache: torch.Tensor, head_dim: int, loc: torch.Tensor,
                           k_cache: torch.Tensor, v_cache: torch.Tensor, k_inv_scale: float = 1.0,
                           v_inv_scale: float = 1.0, qk_norm: QKNorm | None = None) -> None:
    """rope_inplace (full rotary: rotary_dim == head_dim) plus k_cache[loc] = rotated k, v_cache[loc] = v;
    caches are [slots, Hk, D] contiguous. An FP8 cache gets k * k_inv_scale and v * v_inv_scale.
    With `qk_norm`, q and k are first normed per head (in place, before rotation)."""
    _launch(positions, q, k, cos_sin_cache, head_dim, head_dim, v, loc, k_cache, v_cache, k_inv_scale, v_inv_scale,
            qk_norm)
