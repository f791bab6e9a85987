"""INT4 group-quantized matmuls on the GPU (Triton), on the internal layout of int4_numerics.py:
qweight [N, K/8] int32 (eight codes per word, packed along K), scales and zeros [N, K/group].

`int4_gemv` (one row, batch-1 decode): each program streams BLOCK_N full rows of packed codes, one
BLOCK_K chunk at a time (within one group, or spanning several with a scale and zero per word), and
accumulates (q - z) * (x s) per weight, reduced once after the loop: per weight a shift, a
mask-and-or (`_unpack`: no integer-to-float conversion), a subtraction, a multiply and a
multiply-add. The first chunk's codes are loaded
before the programmatic-dependent-launch wait (jackfield.kernels: weights are written by no
kernel).
`int4_matmul` (a few to a few hundred rows): tiles of codes are unpacked and dequantized to the
activation dtype in registers and fed to tensor-core dots.
`int4_dequantize` writes the dequantized weight [N, K]: large prefill batches multiply it with
cuBLAS (int4_linear.py), where the matmul's compute dwarfs the extra pass.
The dequantize kernel also reads the codes in tinygemm's layout (`TG`, int4_tinygemm.py), which
layers that run their few-row matmuls through PyTorch's tinygemm keep instead of the internal one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs
from jackfield_plugins.quant.gemm_tiles import grid_size, output_tile, store_tile, word_slots
from jackfield_plugins.quant.int4_linear import tile_fits


MAGIC = tl.constexpr(8388608.0)  # 2^23: the float32 whose low mantissa bits are an int4 code added to it


@triton.jit
def _unpack(packed, WORDS: tl.constexpr):
    """[R, WORDS] int32 words -> [R, WORDS, 8] float32 values 2^23 + code (slot i = bits 4i..4i+3).

    The code is ORed into the mantissa of 2^23 instead of converted: integer-to-float conversion
    runs at a quarter of the FP32 rate on Hopper, a shift, a mask-and-or and the subtraction of
    2^23 + zero (exact in float32) at full rate."""
    shifts = tl.arange(0, 8) * 4
    bits = ((packed[:, :, None] >> shifts[None, None, :]) & 0xF) | 0x4B000000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _int4_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, N, K, stride_qn, stride_sn,
                      GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    WORDS: tl.constexpr = BLOCK_K // 8
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    words = tl.arange(0, WORDS)
    cols = words[:, None] * 8 + tl.arange(0, 8)[None, :]  # [WORDS, 8]: column of each code in a chunk
    q_rows = q_ptr + rows[:, None].to(tl.int64) * stride_qn + words[None, :]
    s_rows = s_ptr + rows.to(tl.int64) * stride_sn
    z_rows = z_ptr + rows.to(tl.int64) * stride_sn
    packed = tl.load(q_rows, mask=rmask[:, None], other=0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x is written by the kernel before: read it only from here
    acc = tl.zeros([BLOCK_N, WORDS, 8], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x = tl.load(x_ptr + k0 + cols).to(tl.float32)
        codes = _unpack(packed, WORDS)
        if k0 + BLOCK_K < K:
            packed = tl.load(q_rows + (k0 + BLOCK_K) // 8, mask=rmask[:, None], other=0)
        if GROUP % BLOCK_K == 0:  # the chunk lies in one group: one scale and zero a row
            g = k0 // GROUP
            s = tl.load(s_rows + g, mask=rmask, other=0.0).to(tl.float32)[:, None, None]
            z = tl.load(z_rows + g, mask=rmask, other=0.0).to(tl.float32)[:, None, None] + MAGIC
        else:  # the chunk spans groups: a scale and zero a word (cached: a group's words share them)
            g = (k0 + words * 8) // GROUP
            s = tl.load(s_rows[:, None] + g[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)[:, :, None]
            z = tl.load(z_rows[:, None] + g[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)[:, :, None]
            z += MAGIC
        # (q - z) s x per weight, summed once at the end: no reduction across lanes in the loop
        acc += (codes - z) * (x[None, :, :] * s)
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _code_at(packed, i: tl.constexpr):
    """Code i of each word as the exact float32 q 16^j (j = i % 5: codes 5-7 from the word shifted by 20):
    masked in place and ORed into 2^23, no shift for codes 0-4 (bits 4i..4i+3 of the word)."""
    if i >= 5:
        packed = packed >> 20
    return ((packed & (0xF << (4 * (i % 5)))) | 0x4B000000).to(tl.float32, bitcast=True) - MAGIC


@triton.jit
def _int4_gemv_grouped_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, N, K, stride_qn, stride_sn,
                              GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr, X_SPLIT: tl.constexpr, PDL: tl.constexpr):
    """One row, whole groups per chunk (BLOCK_K a multiple of GROUP). Per word, the dot of its eight
    codes with x, sum q x, and the word's sum of x; then s (sum q x - z sum x) per word, added to a
    per-word accumulator reduced once after the loop: scales and zeros are loaded once per (row,
    group) and multiply once per word of eight codes, never per weight, and no reduction across
    lanes runs in the loop.

    Code i of a word (bits 4i..4i+3) is masked in place (`_code_at`: 2^23 + q 16^i, one
    mask-and-or, the subtraction of 2^23) and x pre-scaled by 16^-i (exact, a power of two): per
    weight a mask-and-or, a subtraction and a multiply-add. X_SPLIT: x is loaded a vector of eight
    per word and split in registers (else one strided load per code position)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    GPC: tl.constexpr = BLOCK_K // GROUP  # groups per chunk
    WPG: tl.constexpr = GROUP // 8        # words per group
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows_c = tl.minimum(rows, N - 1).to(tl.int64)  # clamped, not masked: unmasked vector loads
    gi = tl.arange(0, GPC)
    word = gi[:, None] * WPG + tl.arange(0, WPG)[None, :]  # [GPC, WPG]: word of the chunk
    q_ptrs = q_ptr + rows_c[:, None, None] * stride_qn + word[None, :, :]
    s_ptrs = s_ptr + rows_c[:, None] * stride_sn + gi[None, :]
    z_ptrs = z_ptr + rows_c[:, None] * stride_sn + gi[None, :]
    x_ptrs = x_ptr + word[:, :, None] * 8 + tl.arange(0, 8)[None, None, :]  # [GPC, WPG, 8]: contiguous
    packed = tl.load(q_ptrs)  # [BLOCK_N, GPC, WPG]
    if PDL:
        tl.extra.cuda.gdc_wait()  # x is written by the kernel before: read it only from here
    acc = tl.zeros([BLOCK_N, GPC, WPG], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        if X_SPLIT:  # x's eight values of each word loaded as one vector, split in registers (slot 4a + 2b + c)
            x0, x1, x2, x3, x4, x5, x6, x7 = word_slots(tl.load(x_ptrs + k0).to(tl.float32), GPC, WPG)
        else:  # one strided load per code position (from L1)
            x0 = tl.load(x_ptr + k0 + word * 8).to(tl.float32)
            x1 = tl.load(x_ptr + k0 + word * 8 + 1).to(tl.float32)
            x2 = tl.load(x_ptr + k0 + word * 8 + 2).to(tl.float32)
            x3 = tl.load(x_ptr + k0 + word * 8 + 3).to(tl.float32)
            x4 = tl.load(x_ptr + k0 + word * 8 + 4).to(tl.float32)
            x5 = tl.load(x_ptr + k0 + word * 8 + 5).to(tl.float32)
            x6 = tl.load(x_ptr + k0 + word * 8 + 6).to(tl.float32)
            x7 = tl.load(x_ptr + k0 + word * 8 + 7).to(tl.float32)
        xsum = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
        dot = _code_at(packed, 0) * x0[None, :, :]
        dot += _code_at(packed, 1) * (x1 * 0.0625)[None, :, :]
        dot += _code_at(packed, 2) * (x2 * 0.00390625)[None, :, :]
        dot += _code_at(packed, 3) * (x3 * 0.000244140625)[None, :, :]
        dot += _code_at(packed, 4) * (x4 * 0.0000152587890625)[None, :, :]
        dot += _code_at(packed, 5) * x5[None, :, :]
        dot += _code_at(packed, 6) * (x6 * 0.0625)[None, :, :]
        dot += _code_at(packed, 7) * (x7 * 0.00390625)[None, :, :]  # x scaled by 16^-(i % 5): exact
        if k0 + BLOCK_K < K:
            packed = tl.load(q_ptrs + (k0 + BLOCK_K) // 8)
        g = k0 // GROUP
        s = tl.load(s_ptrs + g).to(tl.float32)[:, :, None]
        z = tl.load(z_ptrs + g).to(tl.float32)[:, :, None]
        acc += s * (dot - z * xsum[None, :, :])
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
              bias: torch.Tensor | None, cfg) -> torch.Tensor:
    """x [1, K] contiguous -> [1, N] in x's dtype. `cfg`: an Int4GemvConfig (block_n, block_k
    dividing K (int4_linear.gemv_fits), num_warps, num_stages, pdl, grouped: 1 / 2 the whole-group
    kernel with x split in registers / gathered per code)."""
    n, k = qweight.shape[0], x.shape[1]
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    kernel, extra = _int4_gemv_kernel, {}
    if cfg.grouped:
        kernel, extra = _int4_gemv_grouped_kernel, {"X_SPLIT": cfg.grouped == 1}
    kernel[(triton.cdiv(n, cfg.block_n),)](
        x, qweight, scales, zeros, bias if bias is not None else scales, y, n, k, qweight.stride(0), scales.stride(0),
        GROUP=group, HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **extra,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **(pdl_kwargs(x) if cfg.pdl else {"PDL": False}))
    return y


@triton.jit
def _int4_mm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_qn, stride_sn, stride_ym,
                    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    WORDS: tl.constexpr = BLOCK_K // 8
    offs_m, offs_n, m_mask, n_mask = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    q_ptrs = q_ptr + offs_n[:, None].to(tl.int64) * stride_qn + tl.arange(0, WORDS)[None, :]
    s_rows = s_ptr + offs_n.to(tl.int64) * stride_sn
    z_rows = z_ptr + offs_n.to(tl.int64) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 and GROUP % BLOCK_K == 0 (checked by the caller)
        x = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)
        packed = tl.load(q_ptrs + k0 // 8, mask=n_mask[:, None], other=0)
        codes = tl.reshape(_unpack(packed, WORDS), [BLOCK_N, BLOCK_K])
        g = k0 // GROUP
        s = tl.load(s_rows + g, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_rows + g, mask=n_mask, other=0.0).to(tl.float32) + MAGIC
        w = ((codes - z[:, None]) * s[:, None]).to(x.dtype)
        acc = tl.dot(x, tl.trans(w), acc)
    store_tile(y_ptr, acc, b_ptr, offs_m, offs_n, m_mask, n_mask, stride_ym, HAS_BIAS)


def mm_tiles(m: int, group: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by rows; BLOCK_K divides the group."""
    bk = 64 if group % 64 == 0 else 32
    if m <= 16:
        return 16, 64, bk, 4, 4
    if m <= 64:
        return 64, 64, bk, 4, 3
    return 128, 128, bk, 8, 3


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
                bias: torch.Tensor | None, tiles: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K) times the dequantized weight^T, plus bias: [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = tiles or mm_tiles(m, group)
    if not tile_fits(bk, k, group):
        raise ValueError(f"int4 matmul: BLOCK_K {bk} must divide K {k} and the group {group}")
    grid = grid_size(m, n, bm, bn)
    _int4_mm_kernel[grid](x, qweight, scales, zeros, bias if bias is not None else scales, y, m, n, k, x.stride(0),
                          qweight.stride(0), scales.stride(0), y.stride(0), GROUP=group, HAS_BIAS=bias is not None,
                          BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return y


@triton.jit
def _int4_dequant_kernel(q_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_qn, stride_sn, stride_wn, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TG: tl.constexpr):
    """With TG the codes are in tinygemm's layout (int4_tinygemm.py) and BLOCK_K is 128: a row's 16
    words of one 128-column block are contiguous (64 bytes), and column 32 j + 16 a + 8 b + 2 t +
    parity is nibble 4 parity + 2 a + b of word 4 t + j. Each column loads its word (eight columns
    share one, from L1) and shifts its nibble out, so the stores stay contiguous."""
    WORDS: tl.constexpr = BLOCK_K // 8
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rmask = rows < N
    if TG:
        c = tl.arange(0, BLOCK_K)
        word = ((c // 2) % 4) * 4 + c // 32
        shift = ((c % 2) * 4 + ((c // 16) % 2) * 2 + (c // 8) % 2) * 4
        offs = (rows // 8).to(tl.int64) * K + (rows % 8) * 16 + (k0 // 128) * 128
        words = tl.load(q_ptr + offs[:, None] + word[None, :], mask=rmask[:, None], other=0)
        codes = (((words >> shift[None, :]) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
    else:
        packed = tl.load(q_ptr + rows[:, None].to(tl.int64) * stride_qn + k0 // 8 + tl.arange(0, WORDS)[None, :],
                         mask=rmask[:, None], other=0)
        codes = tl.reshape(_unpack(packed, WORDS), [BLOCK_N, BLOCK_K])
    g = k0 // GROUP
    s = tl.load(s_ptr + rows.to(tl.int64) * stride_sn + g, mask=rmask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows.to(tl.int64) * stride_sn + g, mask=rmask, other=0.0).to(tl.float32) + MAGIC
    w = (codes - z[:, None]) * s[:, None]
    out = w_ptr + rows[:, None].to(tl.int64) * stride_wn + k0 + tl.arange(0, BLOCK_K)[None, :]
    tl.store(out, w.to(w_ptr.dtype.element_ty), mask=rmask[:, None])


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight [N, K] in `dtype`, from the internal layout or tinygemm's (4-D)."""
    tg = qweight.dim() == 4
    n, k = (qweight.shape[0] * 8, qweight.shape[1] * 128) if tg else (qweight.shape[0], qweight.shape[1] * 8)
    w = torch.empty(n, k, dtype=dtype, device=qweight.device)
    bk = 128 if tg else 64 if group % 64 == 0 else 32
    if not tile_fits(bk, k, group):
        raise ValueError(f"int4 dequantize: {bk} must divide K {k} and the group {group}")
    _int4_dequant_kernel[(triton.cdiv(n, 32), k // bk)](qweight, scales, zeros, w, n, k, qweight.stride(0),
                                                        scales.stride(0), w.stride(0), GROUP=group, BLOCK_N=32,
                                                        BLOCK_K=bk, TG=tg, num_warps=4)
    return w
