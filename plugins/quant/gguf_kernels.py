"""GGUF matmuls on the GPU (Triton), reading the planes of gguf_layout.py; products accumulate in
float32.

`gguf_gemv` (one row, batch-1 decode) works on whole int32 words of codes, as the INT4 grouped GEMV
does: per word the dot of its codes with x (each code masked in place and ORed into the mantissa of
2^23, x pre-scaled by the inverse power of two: no integer-to-float conversion) and the word's sum
of x; the sub-block's scale and min are loaded once per (row, sub-block) and applied once per word,
into per-word accumulators reduced after the loop. Each program streams BLOCK_N full rows, BLOCK_K
columns a step, the next step's words loaded during this one (AHEAD: all of the next step's loads,
high bits, scales and x too, before this step's arithmetic); the first step's weight loads go out
before the programmatic-dependent-launch wait (weights are written by no kernel).
`gguf_matmul` (several rows) and `gguf_dequantize` build float32 tiles of weights in registers
(`_weight_tile`, one code path for all types, the type's constants as constexprs): the GEMM feeds
them to tensor-core dots, the dequantize kernel writes the weight [N, K] for cuBLAS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs
from jackfield_plugins.quant.gemm_tiles import grid_size, output_tile, store_tile, word_slots
from jackfield_plugins.quant.gguf_layout import GGUFPlanes


MAGIC = tl.constexpr(8388608.0)  # 2^23: the float32 whose low mantissa bits are a code ORed into it


@triton.jit
def _codes(low_ptr, high_ptr, rows, rmask, k0, K, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The unsigned (Q8_0: signed) codes of columns [k0, k0 + BLOCK_K) of `rows`: int32 [BLOCK_N, BLOCK_K]."""
    r = rows[:, None].to(tl.int64)
    if BITS == 8:  # one branch or the other: a `return` inside a constexpr branch does not end the function
        q = tl.load(low_ptr + r * K + k0 + tl.arange(0, BLOCK_K)[None, :], mask=rmask[:, None], other=0).to(tl.int32)
    else:
        words = tl.load(low_ptr + r * (K // 8) + k0 // 8 + tl.arange(0, BLOCK_K // 8)[None, :], mask=rmask[:, None],
                        other=0)
        q = (words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF
        q = tl.reshape(q, [BLOCK_N, BLOCK_K])
        if BITS > 4:
            PER: tl.constexpr = 32 // (BITS - 4)
            hw = tl.load(high_ptr + r * (K // PER) + k0 // PER + tl.arange(0, BLOCK_K // PER)[None, :],
                         mask=rmask[:, None], other=0)
            h = (hw[:, :, None] >> (tl.arange(0, PER) * (BITS - 4))[None, None, :]) & ((1 << (BITS - 4)) - 1)
            q = q | (tl.reshape(h, [BLOCK_N, BLOCK_K]) << 4)
    return q


@triton.jit
def _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, k0, K,
                 BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
                 MIN_MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The float32 weights [BLOCK_N, BLOCK_K] of `rows` at columns [k0, k0 + BLOCK_K) (gguf_layout's formula)."""
    q = _codes(low_ptr, high_ptr, rows, rmask, k0, K, BITS, BLOCK_N, BLOCK_K)
    NG: tl.constexpr = BLOCK_K // G
    r = rows[:, None].to(tl.int64)
    groups = k0 // G + tl.arange(0, NG)[None, :]
    blocks = r * (K // S) + groups // (S // G)
    s = tl.load(d_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)
    if HAS_SC:
        s = s * tl.load(sc_ptr + r * (K // G) + groups, mask=rmask[:, None], other=0).to(tl.float32)
    v = tl.reshape(q, [BLOCK_N, NG, G]).to(tl.float32) - OFFSET
    w = s[:, :, None] * v
    if MIN_MODE == 1:
        w = w + tl.load(dm_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)[:, :, None]
    if MIN_MODE == 2:
        m = tl.load(dm_ptr + blocks, mask=rmask[:, None], other=0.0).to(tl.float32)
        m = m * tl.load(mn_ptr + r * (K // G) + groups, mask=rmask[:, None], other=0).to(tl.float32)
        w = w - m[:, :, None]
    return tl.reshape(w, [BLOCK_N, BLOCK_K])


def _planes(p: GGUFPlanes) -> tuple:
    """The six plane pointers of the kernels (a missing plane: `d`, never read) and the type's constexprs."""
    f = p.fmt
    ptrs = tuple(t if t is not None else p.d for t in (p.low, p.high, p.sc, p.mn, p.d, p.dm))
    return ptrs, dict(BITS=f.bits, G=f.group, S=f.block, OFFSET=f.offset, HAS_SC=f.has_sc, MIN_MODE=f.min_mode)


@triton.jit
def _code_at(word, hi, i: tl.constexpr, B: tl.constexpr, HB: tl.constexpr, OFF: tl.constexpr):
    """Code i of each int32 word (bits B*i .. B*i+B-1; with HB > 0 its HB high bits from bits HB*i of
    `hi` on top) minus OFF, as the exact float32 (u - OFF) * 2^(B*j), j = i % (23 // B): the code is
    masked in place and ORed into the mantissa of 2^23, whose value (plus the offset's) one float
    subtraction removes: no integer-to-float conversion (a quarter of the FP32 rate). Codes past
    bit 23 come from the word shifted right first."""
    IN: tl.constexpr = 23 // B
    J: tl.constexpr = i % IN
    if i >= IN:
        word = word >> (B * IN * (i // IN))
    bits = word & (((1 << B) - 1) << (B * J))
    if HB > 0:  # the high bits go right above the low ones: bits B*J + B ..
        SHIFT: tl.constexpr = B * J + B - HB * i
        HMASK: tl.constexpr = ((1 << HB) - 1) << (B * J + B)
        if SHIFT >= 0:
            bits = bits | ((hi << SHIFT) & HMASK)
        else:
            bits = bits | ((hi >> -SHIFT) & HMASK)
    SUB: tl.constexpr = 8388608.0 + OFF * (1 << (B * J))  # 2^23 + OFF 2^(B*j)
    return (bits | 0x4B000000).to(tl.float32, bitcast=True) - SUB


@triton.jit
def _pre(x, i: tl.constexpr, B: tl.constexpr):
    """x scaled by 2^-(B*j), the inverse of _code_at's factor (a power of two: exact)."""
    IN: tl.constexpr = 23 // B
    SCALE: tl.constexpr = 1.0 / (1 << (B * (i % IN)))
    return x * SCALE


@triton.jit
def _word_dot(word, hi, x0, x1, x2, x3, x4, x5, x6, x7, B: tl.constexpr, CODES: tl.constexpr, HB: tl.constexpr,
              OFF: tl.constexpr):
    """sum_i (u_i - OFF) x_i over the CODES codes of each word: [R, GPC, WPG] float32."""
    dot = _code_at(word, hi, 0, B, HB, OFF) * x0[None, :, :]
    dot += _code_at(word, hi, 1, B, HB, OFF) * _pre(x1, 1, B)[None, :, :]
    dot += _code_at(word, hi, 2, B, HB, OFF) * _pre(x2, 2, B)[None, :, :]
    dot += _code_at(word, hi, 3, B, HB, OFF) * _pre(x3, 3, B)[None, :, :]
    if CODES == 8:
        dot += _code_at(word, hi, 4, B, HB, OFF) * _pre(x4, 4, B)[None, :, :]
        dot += _code_at(word, hi, 5, B, HB, OFF) * _pre(x5, 5, B)[None, :, :]
        dot += _code_at(word, hi, 6, B, HB, OFF) * _pre(x6, 6, B)[None, :, :]
        dot += _code_at(word, hi, 7, B, HB, OFF) * _pre(x7, 7, B)[None, :, :]
    return dot


@triton.jit
def _gemv_high(packed, h_ptrs, k0, CPW: tl.constexpr, HB: tl.constexpr):
    """The high bits (int32) of the GEMV step at column k0 whose words are `packed` (the words again
    for the types without high bits)."""
    hi = packed  # unused without high bits
    if HB > 0:
        hi = tl.load(h_ptrs + k0 // CPW).to(tl.int32)
    return hi


@triton.jit
def _gemv_scales(sc_ptrs, mn_ptrs, d_ptr, dm_ptr, blk_ptrs, k0, G: tl.constexpr, S: tl.constexpr,
                 HAS_SC: tl.constexpr, MIN_MODE: tl.constexpr):
    """The scale s and min m per (row, sub-block) [BLOCK_N, GPC] of the GEMV step at column k0
    (weight = s (u - OFFSET) + m; m is s again where the type has no min)."""
    blk = blk_ptrs + k0 // S
    s = tl.load(d_ptr + blk).to(tl.float32)
    if HAS_SC:
        s = s * tl.load(sc_ptrs + k0 // G).to(tl.float32)
    m = s  # unused without a min
    if MIN_MODE == 1:
        m = tl.load(dm_ptr + blk).to(tl.float32)
    if MIN_MODE == 2:
        m = -tl.load(dm_ptr + blk).to(tl.float32) * tl.load(mn_ptrs + k0 // G).to(tl.float32)
    return s, m


@triton.jit
def _gemv_kernel(x_ptr, low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, b_ptr, y_ptr, N, K, stride_w, stride_g,
                 stride_b, BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr,
                 HAS_SC: tl.constexpr, MIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, AHEAD: tl.constexpr, PDL: tl.constexpr):
    """One row, BLOCK_K columns (whole sub-blocks) a step. Per int32 word of codes (eight 4-bit ones;
    Q8_0: four bytes, read through an int32 view), dot = sum (u - OFFSET) x over its codes; per
    sub-block of G columns the weight is s (u - OFFSET) + m, so a word adds s dot (+ m xsum, the
    word's sum of x, for the types with a min), with s and m loaded once per (row, sub-block) and
    applied once per word, into a per-word accumulator reduced once after the loop. Q5_K / Q6_K's
    high bits (one int8 / int16 per low word: the `high` plane viewed so) are ORed in above each
    code's low four bits before its conversion.
    Rows past N are clamped (unmasked vector loads) and not stored. The row strides (words K / CPW,
    sub-blocks K / G, blocks K / S) are arguments, so that Triton knows their divisibility (by 16 where
    they are) and loads whole vectors of words."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    CPW: tl.constexpr = 4 if BITS == 8 else 8  # codes per word
    B: tl.constexpr = 8 if BITS == 8 else 4
    HB: tl.constexpr = BITS - 4 if BITS < 8 else 0  # high bits a code (Q5_K 1, Q6_K 2)
    OFF: tl.constexpr = 128 if BITS == 8 else OFFSET  # Q8_0's codes flipped to unsigned (u = q + 128)
    GPC: tl.constexpr = BLOCK_K // G  # sub-blocks a step
    WPG: tl.constexpr = G // CPW      # words a sub-block
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r = tl.minimum(rows, N - 1).to(tl.int64)
    gi = tl.arange(0, GPC)
    word = gi[:, None] * WPG + tl.arange(0, WPG)[None, :]  # [GPC, WPG]: word of the step
    w_ptrs = low_ptr + r[:, None, None] * stride_w + word[None, :, :]
    h_ptrs = high_ptr + r[:, None, None] * stride_w + word[None, :, :]  # Q5_K / Q6_K: one a low word
    x_ptrs = x_ptr + word[:, :, None] * CPW + tl.arange(0, CPW)[None, None, :]  # [GPC, WPG, CPW]
    sc_ptrs = sc_ptr + r[:, None] * stride_g + gi[None, :]  # [BLOCK_N, GPC]: the step's sub-blocks
    mn_ptrs = mn_ptr + r[:, None] * stride_g + gi[None, :]
    blk_ptrs = r[:, None] * stride_b + gi[None, :] // (S // G)  # the step's blocks, from its first one
    packed = tl.load(w_ptrs)
    if AHEAD:
        hi = _gemv_high(packed, h_ptrs, 0, CPW, HB)
        s, m = _gemv_scales(sc_ptrs, mn_ptrs, d_ptr, dm_ptr, blk_ptrs, 0, G, S, HAS_SC, MIN_MODE)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x is written by the kernel before: read it only from here
    if AHEAD:
        xv = tl.load(x_ptrs).to(tl.float32)
    acc = tl.zeros([BLOCK_N, GPC, WPG], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        if AHEAD:  # all of the next step's loads before this step's arithmetic (the last step re-reads
            # its own chunk, just cached, rather than branch)
            kn = tl.minimum(k0 + BLOCK_K, K - BLOCK_K)
            packed_n = tl.load(w_ptrs + kn // CPW)
            hi_n = _gemv_high(packed_n, h_ptrs, kn, CPW, HB)
            s_n, m_n = _gemv_scales(sc_ptrs, mn_ptrs, d_ptr, dm_ptr, blk_ptrs, kn, G, S, HAS_SC, MIN_MODE)
            xv_n = tl.load(x_ptrs + kn).to(tl.float32)
        else:  # only the next step's words ahead (fewer registers)
            xv = tl.load(x_ptrs + k0).to(tl.float32)
            hi = _gemv_high(packed, h_ptrs, k0, CPW, HB)
        if CPW == 8:
            x0, x1, x2, x3, x4, x5, x6, x7 = word_slots(xv, GPC, WPG)
            xsum = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
        else:  # slot 2b + c
            c0, c1 = tl.split(tl.reshape(xv, [GPC, WPG, 2, 2]))
            x0, x2 = tl.split(c0)
            x1, x3 = tl.split(c1)
            x4, x5, x6, x7 = x0, x1, x2, x3  # unused
            xsum = (x0 + x1) + (x2 + x3)
        if BITS == 8:
            packed = packed ^ -2139062144  # 0x80808080: each signed byte q becomes u = q + 128
        dot = _word_dot(packed, hi, x0, x1, x2, x3, x4, x5, x6, x7, B, CPW, HB, OFF)
        if not AHEAD:
            if k0 + BLOCK_K < K:
                packed = tl.load(w_ptrs + (k0 + BLOCK_K) // CPW)
            s, m = _gemv_scales(sc_ptrs, mn_ptrs, d_ptr, dm_ptr, blk_ptrs, k0, G, S, HAS_SC, MIN_MODE)
        if MIN_MODE == 0:
            acc += s[:, :, None] * dot
        else:
            acc += s[:, :, None] * dot + m[:, :, None] * xsum[None, :, :]
        if AHEAD:
            packed, hi, s, m, xv = packed_n, hi_n, s_n, m_n, xv_n
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def block_k(p: GGUFPlanes, largest: int = 256) -> int:
    """The widest power-of-two chunk (at most `largest`, at least the type's sub-block) dividing K."""
    bk = largest
    while bk > max(p.fmt.group, 32) and p.in_features % bk:
        bk //= 2
    if p.in_features % bk or bk % p.fmt.group:
        raise ValueError(f"GGUF kernels: K {p.in_features} is not a multiple of {max(p.fmt.group, 32)}")
    return bk


@dataclass(frozen=True)
class GGUFGemvConfig:
    """A GEMV launch: rows a program, columns a step (at most; block_k() fits it to K), warps, stages."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    ahead: bool = False  # all of the next step's loads ahead (else only its words: fewer registers)
    pdl: bool = True  # programmatic dependent launch where jackfield.sdk.pdl_kwargs allows it


GEMV_CONFIGS = tuple(GGUFGemvConfig(*c) for c in [  # timed per type and shape by the SDK's Gemv tuner
    # x is split into its code positions through shared memory once a step for all BLOCK_N rows: more
    # rows a thread (BLOCK_N above 2 * num_warps) spread that, and the x pre-scaling, over more weights
    (16, 512, 4, 2), (8, 512, 4, 2), (32, 512, 4, 2), (32, 512, 8, 2), (16, 1024, 4, 2), (32, 256, 4, 2),
    # everything ahead: a step waits on no DRAM round trip of its own (Q5_K's and Q6_K's high bits,
    # the K-quants' scales), at up to 40% more registers (sm_90: Q6_K 16 x 512 takes 128 against 95)
    (16, 512, 4, 2, True), (8, 512, 4, 2, True), (32, 512, 8, 2, True)])
GEMV_DEFAULT = GEMV_CONFIGS[0]


def _word_views(p: GGUFPlanes) -> tuple:
    """The GEMV's plane pointers: Q8_0's int8 codes as int32 words of four; Q5_K's / Q6_K's high plane as
    one int8 / int16 a low word (little-endian: byte / half j of the packed words holds the high bits of
    low word j's eight codes, code i at bit i / bits 2i, 2i + 1)."""
    (low, high, *rest), consts = _planes(p)
    if p.fmt.bits == 8:
        low = low.view(torch.int32)
    elif p.fmt.bits > 4:
        high = high.view(torch.int8 if p.fmt.bits == 5 else torch.int16)
    return (low, high, *rest), consts


def gguf_gemv(x: torch.Tensor, p: GGUFPlanes, bias: torch.Tensor | None = None,
              cfg: GGUFGemvConfig = GEMV_DEFAULT) -> torch.Tensor:
    """x [1, K] contiguous -> [1, N] in x's dtype."""
    n, k = p.out_features, p.in_features
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    ptrs, consts = _word_views(p)
    f = p.fmt
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](x, *ptrs, bias if bias is not None else p.d, y, n, k,
                                             k // (4 if f.bits == 8 else 8), k // f.group, k // f.block, **consts,
                                             HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n,
                                             BLOCK_K=block_k(p, cfg.block_k), AHEAD=cfg.ahead, num_warps=cfg.num_warps,
                                             num_stages=cfg.num_stages,
                                             **(pdl_kwargs(x) if cfg.pdl else {"PDL": False}))
    return y


@triton.jit
def _mm_kernel(x_ptr, low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
               BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
               MIN_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, m_mask, n_mask = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K % BLOCK_K == 0 (checked by the caller)
        x = tl.load(x_ptrs + k0, mask=m_mask[:, None], other=0.0)
        w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, offs_n, n_mask, k0, K, BITS, G, S, OFFSET,
                         HAS_SC, MIN_MODE, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    store_tile(y_ptr, acc, b_ptr, offs_m, offs_n, m_mask, n_mask, stride_ym, HAS_BIAS)


def mm_tiles(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K limit, num_warps, num_stages) by rows."""
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 64, 64, 4, 3
    return 128, 128, 64, 8, 3


def gguf_matmul(x: torch.Tensor, p: GGUFPlanes, bias: torch.Tensor | None = None,
                tiles: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K) times the weight^T, plus bias: [M, N] in x's dtype."""
    m, n = x.shape[0], p.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = tiles or mm_tiles(m)
    ptrs, consts = _planes(p)
    _mm_kernel[grid_size(m, n, bm, bn)](x, *ptrs, bias if bias is not None else p.d, y, m, n, p.in_features,
                                        x.stride(0), y.stride(0), **consts, HAS_BIAS=bias is not None, BLOCK_M=bm,
                                        BLOCK_N=bn, BLOCK_K=block_k(p, bk), GROUP_M=8, num_warps=warps,
                                        num_stages=stages)
    return y


@triton.jit
def _dequant_kernel(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, w_ptr, N, K,
                    BITS: tl.constexpr, G: tl.constexpr, S: tl.constexpr, OFFSET: tl.constexpr, HAS_SC: tl.constexpr,
                    MIN_MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rmask = rows < N
    w = _weight_tile(low_ptr, high_ptr, sc_ptr, mn_ptr, d_ptr, dm_ptr, rows, rmask, k0, K, BITS, G, S, OFFSET, HAS_SC,
                     MIN_MODE, BLOCK_N, BLOCK_K)
    out = w_ptr + rows[:, None].to(tl.int64) * K + k0 + tl.arange(0, BLOCK_K)[None, :]
    tl.store(out, w.to(w_ptr.dtype.element_ty), mask=rmask[:, None])


def gguf_dequantize(p: GGUFPlanes, dtype: torch.dtype) -> torch.Tensor:
    """The weight [N, K] in `dtype`."""
    n, k = p.out_features, p.in_features
    w = torch.empty(n, k, dtype=dtype, device=p.low.device)
    bk = block_k(p, 64 if p.fmt.group <= 64 else p.fmt.group)
    ptrs, consts = _planes(p)
    _dequant_kernel[(triton.cdiv(n, 16), k // bk)](*ptrs, w, n, k, **consts, BLOCK_N=16, BLOCK_K=bk, num_warps=4)
    return w
