"""Matrix-vector product y = x W^T (+ b) for a single row x: the batch-1 decode linear layers (Triton).

At batch 1 a linear layer only streams its weight from memory. cuBLAS picks split-K kernels for the
smaller matrices of an 8B model (qkv, o_proj, down_proj) that reach 70-90% of the copy bandwidth;
this kernel gives each program a few full rows, so no reduction pass is needed. Whether it beats
cuBLAS depends on the shape and the GPU, so `GemvTuner` times the candidate block configurations
against `F.linear` once per (N, K, dtype) and keeps the faster (see `jackfield.sdk.layers.gemv`).

Two fused variants take the small kernel before a linear layer into its prologue, which at batch 1
is a launch of its own for a few microseconds of work: RMSNorm (with the residual add) before
qkv_proj and gate_up_proj, SiLU-and-mul before down_proj. They are timed against the unfused pair.

On Hopper every configuration is launched as a programmatic dependent launch (`jackfield.kernels`):
a GEMV's programs start during the last wave of the kernel before it and load their first weight
chunk, which no kernel writes, before they wait for that kernel's output. Back to back, batch-1
linears otherwise leave the memory system idle at every kernel boundary (the H100 numbers are in
docs/benchmarks.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jackfield.kernels import pdl_kwargs
from jackfield.sdk.layers.gemv import WeightScale

log = logging.getLogger(__name__)


@triton.jit
def _prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, k0, K, cols, pid,
              ADD_RES: tl.constexpr, NORM: tl.constexpr, SILU_MUL: tl.constexpr):
    """One BLOCK_K chunk of p(x) in float32, and its squares before the norm weight (for RMSNorm)."""
    if SILU_MUL:
        gate = tl.load(x_ptr + k0 + cols).to(tl.float32)
        up = tl.load(x_ptr + K + k0 + cols)
        x = ((gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up).to(tl.float32)
        sq = x
    else:
        x = tl.load(x_ptr + k0 + cols)
        if ADD_RES:  # the sum is rounded to the storage dtype, as the unfused add does
            x = (x.to(tl.float32) + tl.load(r_ptr + k0 + cols).to(tl.float32)).to(x.dtype)
            tl.store(r_out_ptr + k0 + cols, x, mask=cols + pid * K < K)  # program 0 only
        x = x.to(tl.float32)
        sq = x * x
        if NORM:
            x = x * tl.load(g_ptr + k0 + cols).to(tl.float32)
    return x, sq


@triton.jit
def _block_scale(s_ptr, rows, rmask, k0, stride_sn, SCALE_N: tl.constexpr, SCALE_K: tl.constexpr):
    """The weight scale of each row's chunk at k0, for block-wise scales (SCALE == 2)."""
    return tl.load(s_ptr + (rows // SCALE_N) * stride_sn + k0 // SCALE_K, mask=rmask, other=0.0)


@triton.jit
def _gemv_kernel(x_ptr, r_ptr, g_ptr, w_ptr, b_ptr, y_ptr, r_out_ptr, s_ptr, N, K, stride_wn, stride_sn, eps,
                 ADD_RES: tl.constexpr, NORM: tl.constexpr, SILU_MUL: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SCALE: tl.constexpr, SCALE_N: tl.constexpr, SCALE_K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """y = W p(x) (+ b); the prologue p is the identity, RMSNorm (of x + r with ADD_RES; program 0
    also writes x + r) or SiLU-and-mul (x = [gate | up], each K long).

    Quantized weights (int8 or FP8 codes) are multiplied by their scales: SCALE 1 is one scale per
    row (s [N]), SCALE 2 one per [SCALE_N, SCALE_K] block (s [cdiv(N, SCALE_N), cdiv(K, SCALE_K)],
    BLOCK_K dividing SCALE_K).

    With PDL (launched as a programmatic dependent launch) the programs start while the kernel
    before is still finishing: each loads its first weight chunk, which no kernel writes, then waits
    for the previous grid's completion before it reads x or r and before any store."""
    if PDL:  # let the next kernel's programs start loading their weights during this kernel's tail
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows[:, None] * stride_wn + cols[None, :]
    w = tl.load(w_rows, mask=rmask[:, None], other=0.0)  # chunk 0, peeled off the loop
    if PDL:
        tl.extra.cuda.gdc_wait()  # x and r are written by earlier kernels: read them only from here
    x, sq = _prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, 0, K, cols, pid, ADD_RES, NORM, SILU_MUL)
    acc = w.to(tl.float32) * x[None, :]
    if SCALE == 2:
        acc = acc * _block_scale(s_ptr, rows, rmask, 0, stride_sn, SCALE_N, SCALE_K)[:, None]
    for k0 in range(BLOCK_K, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x, s = _prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, k0, K, cols, pid, ADD_RES, NORM, SILU_MUL)
        sq += s  # every program sees all of x: it sums the squares on the way
        w = tl.load(w_rows + k0, mask=rmask[:, None], other=0.0)
        if SCALE == 2:
            acc += w.to(tl.float32) * x[None, :] * _block_scale(s_ptr, rows, rmask, k0, stride_sn, SCALE_N,
                                                                SCALE_K)[:, None]
        else:
            acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if SCALE == 1:
        y = y * tl.load(s_ptr + rows, mask=rmask, other=0.0)
    if NORM:
        y = y * tl.rsqrt((tl.sum(sq, axis=0) / K + eps).to(tl.float32))  # eps: float64 under torch.compile
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    pdl: bool = True  # programmatic dependent launch where jackfield.kernels.pdl_kwargs allows it


CANDIDATES = tuple(GemvConfig(n, k, w, s) for n, k, w, s in [
    (2, 1024, 4, 4), (4, 512, 4, 4), (4, 1024, 4, 3), (8, 512, 4, 3), (16, 256, 8, 3), (4, 2048, 8, 2)])
FLUSH_BYTES = 128 << 20  # larger than the L2 cache of current GPUs (50 MB on H100)


# Block-wise scaled weights need BLOCK_K to divide the scale block (128 in DeepSeek-V3 checkpoints).
BLOCK_SCALE_CANDIDATES = tuple(GemvConfig(n, k, w, s) for n, k, w, s in [
    (8, 128, 4, 4), (16, 128, 4, 3), (32, 128, 8, 3), (16, 64, 4, 4), (32, 64, 4, 3)])


def fits(cfg: GemvConfig, k: int, wscale: WeightScale | None = None) -> bool:
    block_k = wscale.block[1] if wscale is not None and wscale.block is not None else None
    return k % cfg.block_k == 0 and (block_k is None or block_k % cfg.block_k == 0)


# One-byte codes (int8 / FP8 with per-row scales) move half of bf16's bytes per chunk: chunks twice
# as long too, so that a program keeps as many bytes of weight in flight.
CODE_CANDIDATES = CANDIDATES + tuple(GemvConfig(n, k, w, s) for n, k, w, s in [
    (4, 2048, 8, 3), (8, 1024, 4, 3), (8, 2048, 8, 2), (2, 4096, 8, 2)])


def candidates(wscale: WeightScale | None) -> tuple[GemvConfig, ...]:
    """The configurations timed for a weight with these scales."""
    if wscale is None:
        return CANDIDATES
    return BLOCK_SCALE_CANDIDATES if wscale.block is not None else CODE_CANDIDATES


def _launch(x, r, g, weight, bias, y, r_out, eps, cfg, add_res=False, norm=False, silu_mul=False,
            wscale: WeightScale | None = None) -> None:
    n, k = weight.shape
    mode, (sn, sk), s = 0, (1, 1), weight
    if wscale is not None:
        s = wscale.scale
        mode, (sn, sk) = (1, (1, 1)) if wscale.block is None else (2, wscale.block)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, r if r is not None else x, g if g is not None else x, weight, bias if bias is not None else weight, y,
        r_out if r_out is not None else y, s, n, k, weight.stride(0), s.stride(0) if s.dim() == 2 else 0, eps,
        ADD_RES=add_res, NORM=norm, SILU_MUL=silu_mul, HAS_BIAS=bias is not None, SCALE=mode, SCALE_N=sn,
        SCALE_K=sk, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **(pdl_kwargs(x) if cfg.pdl else {"PDL": False}))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig,
         wscale: WeightScale | None = None) -> torch.Tensor:
    """x: [1, K] contiguous, weight: [N, K] with unit stride along K (int8 / FP8 codes with
    `wscale`). Returns [1, N] in x's dtype."""
    y = torch.empty(1, weight.shape[0], dtype=x.dtype, device=x.device)
    _launch(x, None, None, weight, bias, y, None, 0.0, cfg, wscale=wscale)
    return y


def gemv_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                 weight: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig,
                 wscale: WeightScale | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(x + residual) (or of x) times W^T in one launch. Returns (y [1, N], x + residual);
    the sum goes to a new tensor, never over an input that other programs still read."""
    y = torch.empty(1, weight.shape[0], dtype=x.dtype, device=x.device)
    r_out = torch.empty_like(x) if residual is not None else None
    _launch(x, residual, norm_weight, weight, bias, y, r_out, eps, cfg, add_res=residual is not None, norm=True,
            wscale=wscale)
    return y, (r_out if residual is not None else x)


def gemv_silu_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig,
                  wscale: WeightScale | None = None) -> torch.Tensor:
    """(silu(x[:, :K]) * x[:, K:]) times W^T in one launch; x: [1, 2K] contiguous."""
    y = torch.empty(1, weight.shape[0], dtype=x.dtype, device=x.device)
    _launch(x, None, None, weight, bias, y, None, 0.0, cfg, silu_mul=True, wscale=wscale)
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
    """Per key (variant, N, K, dtype): the fastest GemvConfig, or None when the unfused path (cuBLAS,
    and the separate norm or activation kernel of a fused variant) is faster.

    One tuner per engine, shared by its linear layers; a key is timed the first time it is met
    outside CUDA-graph capture and torch.compile tracing: with CUDA graphs that is the warm-up
    forward before capture; with graphs disabled, the first batch-1 decode (a one-time pause: the
    timing itself takes milliseconds, compiling the candidates seconds the first time Triton meets
    them on a machine). Under --enable-torch-compile the graphs are traced before any eager batch-1
    forward, so they keep cuBLAS."""

    def __init__(self):
        self.choices: dict[tuple, GemvConfig | None] = {}

    def choice(self, key: tuple, k: int, baseline, candidate, wscale: WeightScale | None = None,
               configs: tuple | None = None) -> GemvConfig | None:
        """`baseline()` runs the unfused path, `candidate(cfg)` the kernel with one configuration
        (for a weight with scales `wscale`); `configs` replaces the candidate list (another GEMV
        kernel's configurations, each with a `block_k`)."""
        if key not in self.choices:
            if torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling():
                return None  # never time inside a capture or a trace; the unfused path is always valid
            self.choices[key] = self._tune(key, k, baseline, candidate, wscale, configs)
        return self.choices[key]

    def _tune(self, key: tuple, k: int, baseline, candidate, wscale: WeightScale | None,
              configs: tuple | None) -> GemvConfig | None:
        flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        best, best_ms = None, _time_ms(baseline, flush)
        base_ms = best_ms
        for cfg in configs if configs is not None else candidates(wscale):
            if not fits(cfg, k, wscale):
                continue
            try:
                ms = _time_ms(lambda: candidate(cfg), flush)
            except Exception as exc:  # a config this GPU or Triton version cannot compile: skip it
                log.warning("gemv config %s failed for %s: %s", cfg, key, exc)
                continue
            log.debug("%s %s: %.4f ms (unfused %.4f)", key, cfg, ms, base_ms)
            if ms < best_ms - 0.5e-3:  # a win of at least 0.5 us per call, beyond timing noise
                best, best_ms = cfg, ms
        log.info("batch-1 linear %s: %s", key, best or "unfused")
        return best
