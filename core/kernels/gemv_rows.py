"""y = x W^T (+ b) for 2 to 16 rows of x, reading W once: small decode batches and verify forwards (Triton).

At batch 2-16 a decode step (or a verify forward of a few drafts) still mostly streams the weights, but cuBLAS's GEMMs for a few rows reach
less of the copy bandwidth than the one-row GEMV (`jackfield.kernels.gemv`): on the H100 the 8B
step goes from 5.6 ms at batch 1 to 6.4 ms at batch 2. This kernel gives each program BLOCK_N
weight rows and all rows of x, so every weight chunk is loaded once and multiplied into each row
of x. Two inner products are timed per shape (`GemvTuner`), and the faster kept, each against cuBLAS:

* DOT False: x padded to ROWS = the next power of two; the products accumulate in registers as
  [ROWS, BLOCK_N, BLOCK_K] and are summed once at the end (no reduction per chunk).
* DOT True: x padded to 16 rows and `tl.dot` with the weight chunk (tensor cores; the padding
  rows are free where the weight bytes bound the time).

The prologues (RMSNorm of x + residual, SiLU-and-mul), weight scales and programmatic dependent
launch are those of the one-row kernel; the norm is per row of x.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@triton.jit
def _block_scale(s_ptr, rows, rmask, k0, stride_sn, SCALE: tl.constexpr, SCALE_N: tl.constexpr,
                 SCALE_K: tl.constexpr):
    """The weight scale of each weight row's chunk at k0 for block-wise scales (SCALE == 2); with
    other modes a placeholder that `_product` does not read."""
    s = rows.to(tl.float32)
    if SCALE == 2:
        s = tl.load(s_ptr + (rows // SCALE_N) * stride_sn + k0 // SCALE_K, mask=rmask, other=0.0)
    return s


@triton.jit
def _rows_prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, xo, ro, k0, cols, K, lmask, smask,
                   ADD_RES: tl.constexpr, NORM: tl.constexpr, SILU_MUL: tl.constexpr):
    """One [ROWS, BLOCK_K] chunk of p(x) in float32 (xo, ro: the chunk's offsets into x and r), and
    its squares before the norm weight."""
    if SILU_MUL:
        gate = tl.load(x_ptr + xo, mask=lmask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + K + xo, mask=lmask, other=0.0)
        x = ((gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up).to(tl.float32)
        sq = x
    else:
        x = tl.load(x_ptr + xo, mask=lmask, other=0.0)
        if ADD_RES:  # the sum is rounded to the storage dtype, as the unfused add does
            x = (x.to(tl.float32) + tl.load(r_ptr + ro, mask=lmask, other=0.0).to(tl.float32)).to(x.dtype)
            tl.store(r_out_ptr + ro, x, mask=smask)  # program 0 only
        x = x.to(tl.float32)
        sq = x * x
        if NORM:
            x = x * tl.load(g_ptr + k0 + cols).to(tl.float32)[None, :]
    return x, sq


@triton.jit
def _product(w, x, x_ptr, bs, SCALE: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr):
    """The chunk's contribution, times the block scales `bs` [BLOCK_N] when SCALE == 2: [ROWS, BLOCK_N]
    with DOT (both operands in x's storage dtype; float32 ones multiplied exactly), else
    [ROWS, BLOCK_N, BLOCK_K]."""
    if DOT:
        wt = tl.trans(w.to(x_ptr.dtype.element_ty))
        if IEEE:
            part = tl.dot(x, wt, input_precision="ieee")
        else:
            part = tl.dot(x.to(x_ptr.dtype.element_ty), wt)
        if SCALE == 2:
            part = part * bs[None, :]
    else:
        part = w.to(tl.float32)[None, :, :] * x[:, None, :]
        if SCALE == 2:
            part = part * bs[None, :, None]
    return part


@triton.jit
def _gemv_rows_kernel(x_ptr, r_ptr, g_ptr, w_ptr, b_ptr, y_ptr, r_out_ptr, s_ptr, M, N, K, stride_xm, stride_wn,
                      stride_sn, eps, ADD_RES: tl.constexpr, NORM: tl.constexpr, SILU_MUL: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SCALE: tl.constexpr, SCALE_N: tl.constexpr, SCALE_K: tl.constexpr,
                      ROWS: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """y [M, N] = p(x) W^T (+ b) for x [M, stride_xm] (M <= ROWS), the prologue p and the scales as in
    `jackfield.kernels.gemv._gemv_kernel`; r and r_out are [M, K] contiguous."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ms = tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    lmask = (ms < M)[:, None] & (cols < BLOCK_K)[None, :]
    smask = lmask & (cols + pid * BLOCK_K < BLOCK_K)[None, :]  # program 0 only
    xo = ms[:, None] * stride_xm + cols[None, :]
    ro = ms[:, None] * K + cols[None, :]
    w_rows = w_ptr + rows[:, None] * stride_wn + cols[None, :]
    w = tl.load(w_rows, mask=rmask[:, None], other=0.0)  # chunk 0, peeled off the loop
    if PDL:
        tl.extra.cuda.gdc_wait()  # x and r are written by earlier kernels: read them only from here
    x, sq = _rows_prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, xo, ro, 0, cols, K, lmask, smask, ADD_RES, NORM, SILU_MUL)
    sq = tl.sum(sq, axis=1)  # per row of x, summed chunk by chunk (a [ROWS, BLOCK_K] sum costs registers)
    acc = _product(w, x, x_ptr, _block_scale(s_ptr, rows, rmask, 0, stride_sn, SCALE, SCALE_N, SCALE_K), SCALE, DOT,
                   IEEE)
    for k0 in range(BLOCK_K, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x, s = _rows_prologue(x_ptr, r_ptr, g_ptr, r_out_ptr, xo + k0, ro + k0, k0, cols, K, lmask, smask,
                              ADD_RES, NORM, SILU_MUL)
        sq += tl.sum(s, axis=1)
        w = tl.load(w_rows + k0, mask=rmask[:, None], other=0.0)
        bs = _block_scale(s_ptr, rows, rmask, k0, stride_sn, SCALE, SCALE_N, SCALE_K)
        acc += _product(w, x, x_ptr, bs, SCALE, DOT, IEEE)
    y = acc if DOT else tl.sum(acc, axis=2)
    if SCALE == 1:
        y = y * tl.load(s_ptr + rows, mask=rmask, other=0.0)[None, :]
    if NORM:
        y = y * tl.rsqrt((sq / K + eps).to(tl.float32))[:, None]
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + ms[:, None] * N + rows[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(ms < M)[:, None] & rmask[None, :])


@dataclass(frozen=True)
class RowsConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    dot: bool = False
    pdl: bool = True


# (block_n, block_k, warps, stages); register products kept to <= 64 float32 per thread per row count.
_REGISTER_SHAPES = ((4, 1024, 4, 4), (4, 512, 4, 4), (8, 512, 8, 3), (2, 512, 4, 4), (2, 256, 4, 4),
                    (4, 256, 8, 3), (2, 128, 4, 4), (8, 128, 4, 3))
_DOT_SHAPES = ((16, 256, 4, 3), (32, 128, 4, 4), (32, 256, 8, 3), (64, 128, 8, 3), (16, 128, 4, 4),
               (32, 64, 4, 4))


def padded_rows(m: int) -> int:
    """The row count a kernel is compiled (and timed) for: the next power of two."""
    return 1 << (m - 1).bit_length()


def rows_candidates(rows: int, block_k_max: int | None = None) -> tuple[RowsConfig, ...]:
    """The configurations timed for `rows` (a padded row count, 2..16); `block_k_max` caps the
    chunk length (block-wise scales: a chunk within one scale block)."""
    def ok(k):
        return block_k_max is None or k <= block_k_max

    register = [RowsConfig(n, k, w, s) for n, k, w, s in _REGISTER_SHAPES if rows * n * k <= 64 * 32 * w and ok(k)]
    return tuple(register[:5] + [RowsConfig(n, k, w, s, dot=True) for n, k, w, s in _DOT_SHAPES if ok(k)][:3])


def launch_rows(x, r, g, weight, bias, y, r_out, s, eps, cfg: RowsConfig, mode: int, scale_block: tuple[int, int],
                pdl: dict, add_res=False, norm=False, silu_mul=False) -> None:
    """Launch the kernel over x [M, K] (or [M, 2K] with silu_mul); `s` the scales (the weight when mode 0)."""
    m, (n, k) = x.shape[0], weight.shape
    _gemv_rows_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, r if r is not None else x, g if g is not None else x, weight, bias if bias is not None else weight, y,
        r_out if r_out is not None else y, s, m, n, k, x.stride(0), weight.stride(0),
        s.stride(0) if s.dim() == 2 else 0, eps, ADD_RES=add_res, NORM=norm, SILU_MUL=silu_mul,
        HAS_BIAS=bias is not None, SCALE=mode, SCALE_N=scale_block[0], SCALE_K=scale_block[1],
        ROWS=16 if cfg.dot else padded_rows(m), DOT=cfg.dot, IEEE=x.dtype.itemsize == 4,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **(pdl if cfg.pdl else {"PDL": False}))
