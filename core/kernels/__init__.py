"""Fused GPU kernels for the hot layers (Triton). Imported lazily: `import jackfield` never loads triton.

`fused_available(x)` tells a layer whether to take the fused path for tensor `x`: CUDA tensor,
triton importable, and not disabled with JACKFIELD_DISABLE_FUSED_KERNELS=1.

`pdl_kwargs(x)` are the launch arguments of a kernel that supports programmatic dependent launch
(PDL, compute capability 9.0+): its programs may start while the kernel before it in the stream is
still running, so launch latency and the previous kernel's last wave overlap with this one's start.
Such a kernel takes a `PDL: tl.constexpr` and, when set, first lets its own dependents launch
(`gdc_launch_dependents`) and then waits for the previous grid (`gdc_wait`) before it reads anything
an earlier kernel wrote or stores anything; only data no kernel writes (weights) may be read before
the wait. JACKFIELD_DISABLE_PDL=1 launches every kernel plainly (for A/B measurements).
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


@functools.cache
def _pdl_ok(index: int) -> bool:
    if not _triton_ok() or os.environ.get("JACKFIELD_DISABLE_PDL") == "1":
        return False
    import triton.language as tl

    cuda = tl.extra.cuda
    return torch.cuda.get_device_capability(index)[0] >= 9 and hasattr(cuda, "gdc_wait") and hasattr(
        cuda, "gdc_launch_dependents")


def pdl_available(device: torch.device) -> bool:
    return device.type == "cuda" and _pdl_ok(device.index if device.index is not None else torch.cuda.current_device())


def pdl_kwargs(x: torch.Tensor) -> dict:
    """Launch arguments for a PDL-capable kernel working on `x`: the PDL flag, and Triton's launch_pdl
    (never while torch.compile traces the kernel call: its Triton-kernel support knows no launch_pdl)."""
    if torch.compiler.is_compiling() or not pdl_available(x.device):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}
