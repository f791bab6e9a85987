"""Batch-1 linear layers: Triton GEMV where it beats cuBLAS on this GPU, F.linear everywhere else.

A quantization method that keeps plain weights (the built-in `unquantized`) holds one `Gemv` per
engine and routes its `apply` through `Gemv.linear`. Single-row CUDA inputs go to
`jackfield.kernels.gemv` when the per-shape timing (done once, before CUDA-graph capture) found a
faster block configuration than cuBLAS; every other input, and every machine without Triton or CUDA,
takes F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Gemv:
    def __init__(self):
        self._tuner = None
        self._kernel = None
        self._usable: bool | None = None  # None: not checked yet

    def _ready(self) -> bool:
        if self._usable is None:
            try:
                from jackfield.kernels.gemv import GemvTuner, gemv
            except ImportError:  # no triton: cuBLAS only
                self._usable = False
            else:
                self._tuner, self._kernel, self._usable = GemvTuner(), gemv, True
        return self._usable

    @property
    def choices(self) -> dict:
        """(N, K, dtype) -> the GemvConfig chosen for that weight shape, or None for cuBLAS."""
        return dict(self._tuner.choices) if self._tuner is not None else {}

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if (x.dim() == 2 and x.shape[0] == 1 and x.is_cuda and x.is_contiguous() and weight.stride(1) == 1
                and self._ready()):
            cfg = self._tuner.choice(x, weight, bias)
            if cfg is not None:
                return self._kernel(x, weight, bias, cfg)
        return F.linear(x, weight, bias)
