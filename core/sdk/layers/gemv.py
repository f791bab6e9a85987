"""Batch-1 linear layers: Triton GEMV where it beats cuBLAS on this GPU, F.linear everywhere else.

A quantization method that keeps plain weights (the built-in `unquantized`) holds one `Gemv` per
engine and routes its `apply` through `Gemv.linear`. Single-row CUDA inputs go to
`jackfield.kernels.gemv` when the per-shape timing (done once, before CUDA-graph capture) found a
faster block configuration than cuBLAS; every other input, and every machine without Triton or CUDA,
takes F.linear. `normed_linear` and `silu_mul_linear` are the fused variants (the norm or the
activation in the GEMV's prologue); they return None where the caller should run the unfused pair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _one_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.is_contiguous() and weight.stride(1) == 1


class Gemv:
    def __init__(self):
        self._tuner = None
        self._k = None  # the jackfield.kernels.gemv module, imported on first use
        self._rmsnorm = self._silu_and_mul = None  # the unfused kernels the fused variants are timed against
        self._usable: bool | None = None  # None: not checked yet

    def _ready(self) -> bool:
        if self._usable is None:
            try:
                from jackfield.kernels import gemv as kernels
                from jackfield.kernels.activation import silu_and_mul
                from jackfield.kernels.norm import rmsnorm
            except ImportError:  # no triton: cuBLAS only
                self._usable = False
            else:
                self._tuner, self._k, self._usable = kernels.GemvTuner(), kernels, True
                self._rmsnorm, self._silu_and_mul = rmsnorm, silu_and_mul
        return self._usable

    @property
    def choices(self) -> dict:
        """(variant, N, K, dtype) -> the GemvConfig chosen, or None for the unfused path (cuBLAS)."""
        return dict(self._tuner.choices) if self._tuner is not None else {}

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if _one_row(x, weight) and self._ready():
            cfg = self._tuner.choice(("linear", *weight.shape, weight.dtype), weight.shape[1],
                                     lambda: F.linear(x, weight, bias), lambda c: self._k.gemv(x, weight, bias, c))
            if cfg is not None:
                return self._k.gemv(x, weight, bias, cfg)
        return F.linear(x, weight, bias)

    def normed_linear(self, x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                      weight: torch.Tensor, bias: torch.Tensor | None = None):
        """(RMSNorm(x + residual) W^T + b, x + residual) in one kernel (residual None: norm of x, and
        x back), or None where the unfused norm + `linear` measured faster or the input does not fit."""
        if not (_one_row(x, weight) and (residual is None or residual.is_contiguous()) and self._ready()):
            return None

        def unfused():
            h = self._rmsnorm(x, norm_weight, eps, residual)
            return self.linear(h if residual is None else h[0], weight, bias)

        variant = "rmsnorm_linear" if residual is None else "add_rmsnorm_linear"
        fused = lambda c: self._k.gemv_rmsnorm(x, residual, norm_weight, eps, weight, bias, c)  # noqa: E731
        cfg = self._tuner.choice((variant, *weight.shape, weight.dtype), weight.shape[1], unfused, fused)
        return fused(cfg) if cfg is not None else None

    def silu_mul_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """(silu(gate) * up) W^T + b for x = [gate | up] in one kernel, or None (see normed_linear)."""
        if not (_one_row(x, weight) and x.shape[1] == 2 * weight.shape[1] and self._ready()):
            return None
        fused = lambda c: self._k.gemv_silu_mul(x, weight, bias, c)  # noqa: E731
        cfg = self._tuner.choice(("silu_mul_linear", *weight.shape, weight.dtype), weight.shape[1],
                                 lambda: self.linear(self._silu_and_mul(x), weight, bias), fused)
        return fused(cfg) if cfg is not None else None
