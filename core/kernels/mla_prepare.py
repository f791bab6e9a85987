"""MLA's per-token preparation in one launch (Triton): RMSNorm of the kv latent, rotary on k_pe and on
every head's q_pe, the rotated q_pe written into the absorbed query, and the new latent written to
the KV pool. Replaces about eight small launches per layer (copies, norm, rope, KV store) of
jackfield.sdk.layers.mla on CUDA; the same math as its torch path (the norm rounds like RMSNorm,
rotary is the NeoX half split, cos/sin from the RotaryEmbedding cache).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs


@triton.jit
def _mla_prepare_kernel(Pos, KvA, NormW, QPe, CosSin, QFull, Latent, Loc, Cache,
                        stride_kv, stride_qt, stride_qh, stride_ft, stride_fh, stride_lat, stride_cs, stride_cache,
                        num_heads, eps,
                        LORA: tl.constexpr, ROPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_H: tl.constexpr, STORE: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # jackfield.kernels: let dependents launch, then wait for the previous grid before any load or store
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    t = tl.program_id(0)
    pos = tl.load(Pos + t)
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < LORA
    c = tl.load(KvA + t * stride_kv + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    var = tl.sum(c * c, axis=0) / LORA
    c = (c * tl.rsqrt((var + eps).to(tl.float32))).to(Latent.dtype.element_ty)
    c = c * tl.load(NormW + offs_c, mask=c_mask, other=0.0)
    half = ROPE // 2
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < half
    cos = tl.load(CosSin + pos * stride_cs + offs_r, mask=r_mask, other=0.0)
    sin = tl.load(CosSin + pos * stride_cs + half + offs_r, mask=r_mask, other=0.0)
    k1 = tl.load(KvA + t * stride_kv + LORA + offs_r, mask=r_mask, other=0.0).to(tl.float32)
    k2 = tl.load(KvA + t * stride_kv + LORA + half + offs_r, mask=r_mask, other=0.0).to(tl.float32)
    r1 = (k1 * cos - k2 * sin).to(Latent.dtype.element_ty)
    r2 = (k2 * cos + k1 * sin).to(Latent.dtype.element_ty)
    row = Latent + t * stride_lat
    tl.store(row + offs_c, c.to(Latent.dtype.element_ty), mask=c_mask)
    tl.store(row + LORA + offs_r, r1, mask=r_mask)
    tl.store(row + LORA + half + offs_r, r2, mask=r_mask)
    if STORE:
        slot = Cache + tl.load(Loc + t).to(tl.int64) * stride_cache
        tl.store(slot + offs_c, c.to(Cache.dtype.element_ty), mask=c_mask)
        tl.store(slot + LORA + offs_r, r1.to(Cache.dtype.element_ty), mask=r_mask)
        tl.store(slot + LORA + half + offs_r, r2.to(Cache.dtype.element_ty), mask=r_mask)
    offs_h = tl.arange(0, BLOCK_H)
    hr_mask = (offs_h < num_heads)[:, None] & r_mask[None, :]
    q_row = QPe + t * stride_qt + offs_h[:, None] * stride_qh + offs_r[None, :]
    q1 = tl.load(q_row, mask=hr_mask, other=0.0).to(tl.float32)
    q2 = tl.load(q_row + half, mask=hr_mask, other=0.0).to(tl.float32)
    f_row = QFull + t * stride_ft + offs_h[:, None] * stride_fh + LORA + offs_r[None, :]
    tl.store(f_row, (q1 * cos[None, :] - q2 * sin[None, :]).to(QFull.dtype.element_ty), mask=hr_mask)
    tl.store(f_row + half, (q2 * cos[None, :] + q1 * sin[None, :]).to(QFull.dtype.element_ty), mask=hr_mask)


def mla_prepare(positions: torch.Tensor, kv_a: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                q_pe: torch.Tensor, cos_sin_cache: torch.Tensor, q_full: torch.Tensor, latent: torch.Tensor,
                loc: torch.Tensor | None = None, cache: torch.Tensor | None = None) -> None:
    """kv_a [T, lora + rope] (rows may be strided: a view of the fused projection); q_pe [T, H, rope]
    (any row and head strides, unit last stride); writes latent [T, lora + rope] = [norm(c_kv) |
    rope(k_pe)], q_full[:, :, lora:] = rope(q_pe), and, with `cache` ([slots, lora + rope] view of
    the pool's layer), cache[loc] = latent."""
    t, width = kv_a.shape
    if t == 0:
        return
    heads, rope = q_pe.shape[1], q_pe.shape[2]
    lora = width - rope
    store = cache is not None
    _mla_prepare_kernel[(t,)](
        positions, kv_a, norm_weight, q_pe, cos_sin_cache, q_full, latent, loc if store else positions,
        cache if store else latent,
        kv_a.stride(0), q_pe.stride(0), q_pe.stride(1), q_full.stride(0), q_full.stride(1), latent.stride(0),
        cos_sin_cache.stride(0), cache.stride(0) if store else 0, heads, eps,
        LORA=lora, ROPE=rope, BLOCK_C=triton.next_power_of_2(lora), BLOCK_R=triton.next_power_of_2(rope // 2),
        BLOCK_H=triton.next_power_of_2(heads), STORE=store, num_warps=4, **pdl_kwargs(kv_a))
