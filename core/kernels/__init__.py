"""Fused GPU kernels for the hot layers (Triton). Imported lazily: `import jackfield` never loads triton.

`fused_available(x)` tells a layer whether to take the fused path for tensor `x`: CUDA tensor,
triton importable, and not disabled with JACKFIELD_DISABLE_FUSED_KERNELS=1.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def _triton_ok() -> bool:
    return importlib.util.find_spec("triton") is not None and os.environ.get("JACKFIELD_DISABLE_FUSED_KERNELS") != "1"


def fused_available(x: torch.Tensor) -> bool:
    return x.is_cuda and _triton_ok()
