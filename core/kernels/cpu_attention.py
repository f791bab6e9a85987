"""The CPU decode-attention operator (`cpu_attention.cpp`): each (request, KV head) pair reads its
keys and values once, straight from the paged float32 pool, for all the query heads of its group.

Compiled on first use (`cpp_build.load_operator`) with `-march=native`, so the build is keyed by
this machine's CPU flags as well as the source and torch's version. `unavailable()` says why it
cannot be built here (None when it can); `decode(...)` runs it and torch.compile traces it.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from jackfield.kernels.cpp_build import compiler_missing, load_operator

SOURCE = Path(__file__).with_name("cpu_attention.cpp")


def _cpu_flags() -> str:
    """This CPU's feature flags (the build targets them), or the processor's name off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


@functools.cache
def unavailable() -> str | None:
    """Why the operator cannot be built here, or None."""
    missing = compiler_missing()
    return f"{missing} to build the CPU decode-attention operator" if missing else None


@functools.cache
def build():
    """The `torch.ops.jackfield_cpu_attention` namespace, compiled on the first call of the process's life."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    load_operator("cpu_attention", SOURCE, extra_cflags=("-O3", "-march=native", "-fopenmp-simd"), key_extra=_cpu_flags())
    torch.library.register_fake("jackfield_cpu_attention::decode")(
        lambda q, k_buf, v_buf, slots, seq_lens, scale, window, cap: q.new_empty(q.shape[0], q.shape[1], v_buf.shape[2]))
    return torch.ops.jackfield_cpu_attention


def decode(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, slots: torch.Tensor, seq_lens: torch.Tensor,
           scale: float, sliding_window: int = 0, logit_cap: float = 0.0) -> torch.Tensor:
    """Attention of q [B, H, D] (float32, dense) over request b's first seq_lens[b] pool rows listed
    in slots [B, L] (int64); k_buf [rows, Hkv, D], v_buf [rows, Hkv, Dv] float32. Returns [B, H, Dv]."""
    return build().decode(q, k_buf, v_buf, slots, seq_lens, scale, sliding_window, logit_cap)
