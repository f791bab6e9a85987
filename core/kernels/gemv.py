"""Matrix-vector product y = x W^T (+ b) for a single row x: the batch-1 decode linear layers (Triton).

At batch 1 a linear layer only streams its weight from memory. cuBLAS picks split-K kernels for the
smaller matrices of an 8B model (qkv, o_proj, down_proj) that reach 70-90% of the copy bandwidth;
this kernel gives each program a few full rows, so no reduction pass is needed. Whether it beats
cuBLAS depends on the shape and the GPU, so `GemvTuner` times the candidate block configurations
against `F.linear` once per (N, K, dtype) and keeps the faster (see `jackfield.sdk.layers.linear`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x = tl.load(x_ptr + k0 + cols).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + (k0 + cols)[None, :], mask=rmask[:, None], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


CANDIDATES = tuple(GemvConfig(n, k, w, s) for n, k, w, s in [
    (2, 1024, 4, 4), (4, 512, 4, 4), (4, 1024, 4, 3), (8, 512, 4, 3), (16, 256, 8, 3), (4, 2048, 8, 2)])
FLUSH_BYTES = 128 << 20  # larger than the L2 cache of current GPUs (50 MB on H100)


def fits(cfg: GemvConfig, k: int) -> bool:
    return k % cfg.block_k == 0


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig) -> torch.Tensor:
    """x: [1, K] contiguous, weight: [N, K] with unit stride along K. Returns [1, N] in x's dtype."""
    n, k = weight.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, cfg.block_n),)
    _gemv_kernel[grid](x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
                       HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def _time_ms(fn, flush: torch.Tensor, iters: int = 20) -> float:
    """Mean time of fn with the L2 cache flushed before each call (weights come from DRAM, as in a
    real forward); the flush is included, and is the same for every candidate."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        flush.zero_()
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


class GemvTuner:
    """Per (N, K, dtype): the fastest GemvConfig, or None when F.linear (cuBLAS) is faster.

    One tuner per engine, shared by its linear layers; a shape is timed the first time it is met
    outside CUDA-graph capture: with CUDA graphs that is the warm-up forward before capture; with
    graphs disabled, the first batch-1 decode (a one-time pause: the timing itself takes
    milliseconds, compiling the candidates seconds the first time Triton meets them on a machine)."""

    def __init__(self):
        self.choices: dict[tuple[int, int, torch.dtype], GemvConfig | None] = {}

    def choice(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> GemvConfig | None:
        key = (weight.shape[0], weight.shape[1], weight.dtype)
        if key not in self.choices:
            if torch.cuda.is_current_stream_capturing():
                return None  # never time inside a capture; F.linear is always valid
            self.choices[key] = self._tune(x, weight, bias)
        return self.choices[key]

    @staticmethod
    def _tune(x, weight, bias) -> GemvConfig | None:
        flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=weight.device)
        best, best_ms = None, _time_ms(lambda: torch.nn.functional.linear(x, weight, bias), flush)
        for cfg in CANDIDATES:
            if not fits(cfg, weight.shape[1]):
                continue
            try:
                ms = _time_ms(lambda: gemv(x, weight, bias, cfg), flush)
            except Exception as exc:  # a config this GPU or Triton version cannot compile: skip it
                log.warning("gemv config %s failed for %s: %s", cfg, tuple(weight.shape), exc)
                continue
            if ms < best_ms - 0.5e-3:  # a win of at least 0.5 us per call, beyond timing noise
                best, best_ms = cfg, ms
        log.info("batch-1 linear %s: %s", tuple(weight.shape), best or "cuBLAS")
        return best
