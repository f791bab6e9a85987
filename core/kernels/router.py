"""The residual add, the RMSNorm and an MoE router's logits in one launch (Triton).

Between attention and the experts, a batch-1 MoE layer would otherwise run the add + RMSNorm
kernel and then a cuBLAS GEMV of the router ([E, H], half a megabyte for 128 experts of 2048):
two launches whose fixed costs outweigh their bytes. Here every program recomputes the norm of its
token's row (a few KB, from L2) and the logits of BLOCK_E experts; the first program of a row also
writes the normed row (the experts' input) and the residual sum. The router weight tile is read
before the PDL wait, since no kernel writes it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs


@triton.jit
def _norm_router_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, h_ptr, res_out_ptr, logits_ptr, H, E, eps,
                        BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    pid, row = tl.program_id(0), tl.program_id(1)
    experts = pid * BLOCK_E + tl.arange(0, BLOCK_E)
    cols = tl.arange(0, BLOCK_H)
    emask, cmask = experts < E, cols < H
    w = tl.load(w_ptr + experts[:, None] * H + cols[None, :], mask=emask[:, None] & cmask[None, :], other=0.0)
    if PDL:  # jackfield.kernels: only the weights (which no kernel writes) are read before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    x = tl.load(x_ptr + row * H + cols, mask=cmask, other=0.0).to(tl.float32)
    x += tl.load(res_ptr + row * H + cols, mask=cmask, other=0.0).to(tl.float32)
    x = x.to(h_ptr.dtype.element_ty)  # the sum rounded to the storage dtype, as jackfield.kernels.norm
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / H + eps)
    h = (xf * inv).to(h_ptr.dtype.element_ty) * tl.load(nw_ptr + cols, mask=cmask, other=0.0)
    h = h.to(h_ptr.dtype.element_ty)
    if pid == 0:
        tl.store(res_out_ptr + row * H + cols, x, mask=cmask)
        tl.store(h_ptr + row * H + cols, h, mask=cmask)
    logits = tl.sum(h.to(tl.float32)[None, :] * w.to(tl.float32), axis=1)
    tl.store(logits_ptr + row * E + experts, logits.to(logits_ptr.dtype.element_ty), mask=emask)


def rmsnorm_router(x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                   router_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, s, logits) for x, residual [T, H] (contiguous): s = x + residual, h = RMSNorm(s) in x's
    dtype, logits = h W^T [T, E] in the router weight's dtype (router_weight [E, H], contiguous).
    Meant for a few rows: every row re-reads the router weight."""
    t, hidden = x.shape
    e = router_weight.shape[0]
    h, s = torch.empty_like(x), torch.empty_like(x)
    logits = torch.empty(t, e, dtype=router_weight.dtype, device=x.device)
    if t == 0:
        return h, s, logits
    block_h = triton.next_power_of_2(hidden)
    block_e = min(max(8192 // block_h, 1), triton.next_power_of_2(e))
    _norm_router_kernel[(triton.cdiv(e, block_e), t)](
        x, residual, norm_weight, router_weight, h, s, logits, hidden, e, eps, BLOCK_E=block_e, BLOCK_H=block_h,
        num_warps=4 if block_h <= 2048 else 8, **pdl_kwargs(x))
    return h, s, logits
