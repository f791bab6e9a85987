"""Batch-1 linear layers: Triton GEMV where it beats cuBLAS on this GPU, F.linear everywhere else.

A quantization method that keeps plain weights (the built-in `unquantized`) holds one `Gemv` per
engine and routes its `apply` through `Gemv.linear`. Methods with int8 or FP8 weight codes pass
their scales (`WeightScale`: per row, or per [bn, bk] block) and a `fallback(x)` that computes the
layer their own way; the kernel is timed against that fallback instead of F.linear. Single-row CUDA inputs go to
`jackfield.kernels.gemv` when the per-shape timing (done once, before CUDA-graph capture) found a
faster block configuration than cuBLAS; every other input, and every machine without Triton or CUDA,
takes F.linear. `normed_linear` and `silu_mul_linear` are the fused variants (the norm or the
activation in the GEMV's prologue); they return None where the caller should run the unfused pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WeightScale:
    """The scales of a quantized (int8 / FP8) weight [N, K]: `scale` [N] float32 per row (block
    None), or [cdiv(N, block[0]), cdiv(K, block[1])] per block."""

    scale: torch.Tensor
    block: tuple[int, int] | None = None


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
        """(variant, N, K, dtype[, scale block]) -> the GemvConfig chosen, or None for the unfused path
        (cuBLAS, or a quantized method's fallback); the scale block is there for quantized weights."""
        return dict(self._tuner.choices) if self._tuner is not None else {}

    def choose(self, key: tuple, k: int, baseline, candidate, configs: tuple):
        """For a quantization method's own one-row kernel: the fastest of `configs` (objects with
        block_n, block_k, num_warps, num_stages, pdl; each block_k dividing `k`) timed as
        `candidate(cfg)` against `baseline()` once per `key`, or None where the baseline is faster
        or no kernel can run (no Triton or CUDA, or inside a capture before the timing)."""
        if not self._ready():
            return None
        return self._tuner.choice(key, k, baseline, candidate, configs=configs)

    def _key(self, variant: str, weight: torch.Tensor, wscale) -> tuple:
        key = (variant, *weight.shape, weight.dtype)
        return key if wscale is None else (*key, wscale.block)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, wscale=None,
               fallback=None) -> torch.Tensor:
        """x W^T + b; `wscale` (a WeightScale) for int8 / FP8 codes, and then
        `fallback(x)`, the method's own path, which also runs every input the kernel does not take."""
        if fallback is None:
            fallback = lambda t: F.linear(t, weight, bias)  # noqa: E731
        if _one_row(x, weight) and self._ready():
            cfg = self._tuner.choice(self._key("linear", weight, wscale), weight.shape[1], lambda: fallback(x),
                                     lambda c: self._k.gemv(x, weight, bias, c, wscale), wscale)
            if cfg is not None:
                return self._k.gemv(x, weight, bias, cfg, wscale)
        return fallback(x)

    def normed_linear(self, x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                      weight: torch.Tensor, bias: torch.Tensor | None = None, wscale=None, fallback=None):
        """(RMSNorm(x + residual) W^T + b, x + residual) in one kernel (residual None: norm of x, and
        x back), or None where the unfused norm + `linear` measured faster or the input does not fit."""
        if not (_one_row(x, weight) and (residual is None or residual.is_contiguous()) and self._ready()):
            return None

        def unfused():
            h = self._rmsnorm(x, norm_weight, eps, residual)
            return self.linear(h if residual is None else h[0], weight, bias, wscale, fallback)

        variant = "rmsnorm_linear" if residual is None else "add_rmsnorm_linear"
        fused = lambda c: self._k.gemv_rmsnorm(x, residual, norm_weight, eps, weight, bias, c, wscale)  # noqa: E731
        cfg = self._tuner.choice(self._key(variant, weight, wscale), weight.shape[1], unfused, fused, wscale)
        return fused(cfg) if cfg is not None else None

    def silu_mul_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, wscale=None,
                        fallback=None):
        """(silu(gate) * up) W^T + b for x = [gate | up] in one kernel, or None (see normed_linear)."""
        if not (_one_row(x, weight) and x.shape[1] == 2 * weight.shape[1] and self._ready()):
            return None
        fused = lambda c: self._k.gemv_silu_mul(x, weight, bias, c, wscale)  # noqa: E731
        cfg = self._tuner.choice(self._key("silu_mul_linear", weight, wscale), weight.shape[1],
                                 lambda: self.linear(self._silu_and_mul(x), weight, bias, wscale, fallback), fused,
                                 wscale)
        return fused(cfg) if cfg is not None else None
