"""Fused RMSNorm and residual-add + RMSNorm in one pass over each row (Triton)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs


@triton.jit
def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # jackfield.kernels: let dependents launch, then wait for the previous grid before any load or store
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        x = x + r
        tl.store(res_out_ptr + row * n_cols + cols, x.to(res_out_ptr.dtype.element_ty), mask=mask)
    # round the sum to the storage dtype first, as the unfused path does
    x = x.to(out_ptr.dtype.element_ty).to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    y = x * tl.rsqrt((var + eps).to(tl.float32))  # eps is float64 under torch.compile
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = y.to(out_ptr.dtype.element_ty) * w
    tl.store(out_ptr + row * n_cols + cols, y, mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Same results as jackfield.sdk.layers.norm.RMSNorm: norm(x) or (norm(x+res), x+res)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    n_rows, n_cols = x2.shape
    out = torch.empty_like(x2)
    block = triton.next_power_of_2(n_cols)
    warps = min(max(block // 256, 1), 16)
    if residual is None:
        _rmsnorm_kernel[(n_rows,)](x2, x2, weight, out, out, n_cols, eps, HAS_RES=False, BLOCK=block, num_warps=warps,
                                   **pdl_kwargs(x2))
        return out.view(shape)
    r2 = residual.reshape(-1, n_cols).contiguous()
    res_out = torch.empty_like(x2)
    _rmsnorm_kernel[(n_rows,)](x2, r2, weight, out, res_out, n_cols, eps, HAS_RES=True, BLOCK=block, num_warps=warps,
                               **pdl_kwargs(x2))
    return out.view(shape), res_out.view(shape)
