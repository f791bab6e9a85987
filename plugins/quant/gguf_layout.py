"""GGUF blocks repacked for the CUDA kernels (gguf_kernels.py): the same codes and scales, bit for bit,
moved out of the interleaved ggml blocks into planes a Triton tile loads with plain strides.

Every supported type dequantizes as

    w = d[k // S] * sc[k // G] * (q[k] - OFFSET)  (+ dm[k // S]            for Q4_1's min)
                                                  (- dm[k // S] * mn[k // G] for the K-quants' mins)

with the planes, per output row (all contiguous, rows first):
  `low`   int32 [N, K/8]: the low four bits of each code, eight per word in column order (bits 4i..4i+3
          of word w hold column 8w+i); for Q8_0 instead int8 [N, K], the codes themselves;
  `high`  int32: Q5_K's fifth bit, 32 per word [N, K/32]; Q6_K's top two bits, 16 per word [N, K/16];
  `sc`, `mn` [N, K/G]: the K-quants' sub-block scales and mins (uint8 6-bit for Q4_K / Q5_K, int8 for Q6_K);
  `d`, `dm`  float16 [N, K/S]: the block scale and the block min (Q4_1's m, the K-quants' dmin).
Q4_0 / Q4_1 / Q8_0 keep their 4.5 / 5 / 8.5 bits a weight; the K-quants' 6-bit scales take a byte
each (Q4_K 4.625 bits a weight instead of 4.5, Q5_K 5.625 instead of 5.5, Q6_K unchanged 6.5625).
The products d * sc and dmin * mn are exact in float32 (an 11-bit mantissa times a 6- or 8-bit
integer), so the kernels' weights equal gguf-py's float32 dequantization.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T


@dataclass(frozen=True)
class PlaneFormat:
    """The constants of a type's dequantization (the kernels' constexprs)."""

    bits: int     # 4, 5, 6 or 8
    group: int    # G: columns per sub-block scale (the block size for Q4_0 / Q4_1 / Q8_0)
    block: int    # S: columns per float16 block scale
    offset: int   # subtracted from the unsigned code (Q4_0 8, Q6_K 32); Q8_0's codes are signed
    has_sc: bool  # sub-block scales (the K-quants)
    min_mode: int  # 0 none, 1 + dm (Q4_1), 2 - dm * mn (Q4_K, Q5_K)


FORMATS: dict[int, PlaneFormat] = {
    T.Q4_0: PlaneFormat(4, 32, 32, 8, False, 0),
    T.Q4_1: PlaneFormat(4, 32, 32, 0, False, 1),
    T.Q8_0: PlaneFormat(8, 32, 32, 0, False, 0),
    T.Q4_K: PlaneFormat(4, 32, 256, 0, True, 2),
    T.Q5_K: PlaneFormat(5, 32, 256, 0, True, 2),
    T.Q6_K: PlaneFormat(6, 16, 256, 32, True, 0),
}
"""The ggml types the CUDA kernels read; a layer of any other type is dequantized on load."""


@dataclass(frozen=True)
class GGUFPlanes:
    """One weight [N, K] in the planes above (tensors on the weight's device)."""

    fmt: PlaneFormat
    ggml_type: int
    in_features: int
    low: torch.Tensor
    d: torch.Tensor
    high: torch.Tensor | None = None
    sc: torch.Tensor | None = None
    mn: torch.Tensor | None = None
    dm: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.low.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The planes by name (those the type has)."""
        names = ("low", "d", "high", "sc", "mn", "dm")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 -> [...] float16 (little-endian, as ggml stores it)."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[N, K] small unsigned integers -> int32 [N, K * bits / 32], column order within each word."""
    per = 32 // bits
    v = values.to(torch.int64).reshape(values.shape[0], -1, per)
    shifts = torch.arange(per, device=values.device, dtype=torch.int64) * bits
    words = (v << shifts).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _nibbles(qs: torch.Tensor, span: int) -> torch.Tensor:
    """ggml's 4-bit layout: each run of `span` bytes holds 2 * span codes, first the low nibbles, then
    the high ones. [nb, bytes] -> [nb, 2 * bytes] codes in column order."""
    q = qs.reshape(qs.shape[0], -1, 1, span)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(qs.shape[0], -1)


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K's twelve bytes of 6-bit scales and mins -> ([nb, 8], [nb, 8]) uint8."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def repack(blocks: torch.Tensor, ggml_type: int, in_features: int) -> GGUFPlanes:
    """The planes of `blocks` (uint8 [N, row bytes], as in the file), on the blocks' device."""
    fmt = FORMATS.get(int(ggml_type))
    if fmt is None:
        raise ValueError(f"no CUDA kernel reads GGUF type {T(ggml_type).name}")
    size, nbytes = GGML_QUANT_SIZES[T(ggml_type)]
    n, k = blocks.shape[0], in_features
    if k % size or blocks.shape[1] != k // size * nbytes:
        raise ValueError(f"{blocks.shape[1]} bytes a row do not hold {k} columns of {T(ggml_type).name}")
    b = blocks.reshape(n * (k // size), nbytes)
    rows = lambda t: t.reshape(n, -1).contiguous()  # noqa: E731
    t = int(ggml_type)
    if t == T.Q8_0:
        return GGUFPlanes(fmt, t, k, low=rows(b[:, 2:].view(torch.int8)), d=rows(_f16(b[:, 0:2])))
    if t in (T.Q4_0, T.Q4_1):
        start = 2 if t == T.Q4_0 else 4
        dm = rows(_f16(b[:, 2:4])) if t == T.Q4_1 else None
        return GGUFPlanes(fmt, t, k, low=_pack(rows(_nibbles(b[:, start:], 16)), 4), d=rows(_f16(b[:, 0:2])), dm=dm)
    if t in (T.Q4_K, T.Q5_K):
        sc, mn = _k_scales(b[:, 4:16])
        qs = b[:, 16:] if t == T.Q4_K else b[:, 48:]
        q = _nibbles(qs, 32)
        high = None
        if t == T.Q5_K:  # bit i of qh byte j is the fifth bit of sub-block i's column j
            qh = b[:, 16:48].reshape(-1, 1, 32) >> torch.arange(8, device=b.device, dtype=torch.uint8).reshape(1, 8, 1)
            high = _pack(rows((qh & 1).reshape(-1, 256)), 1)
        return GGUFPlanes(fmt, t, k, low=_pack(rows(q), 4), d=rows(_f16(b[:, 0:2])), dm=rows(_f16(b[:, 2:4])),
                          high=high, sc=rows(sc), mn=rows(mn))
    # Q6_K: ql (128 bytes: two halves of 64, low nibbles then high), qh (64: two halves of 32, four 2-bit
    # fields each), 16 int8 scales, d
    ql = _nibbles(b[:, 0:128], 64)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], device=b.device,
                                                                   dtype=torch.uint8).reshape(1, 1, 4, 1)
    return GGUFPlanes(fmt, t, k, low=_pack(rows(ql), 4), high=_pack(rows((qh & 3).reshape(-1, 256)), 2),
                      sc=rows(b[:, 192:208].view(torch.int8)), d=rows(_f16(b[:, 208:210])))


def dequantize(p: GGUFPlanes) -> torch.Tensor:
    """float32 [N, K] from the planes, in torch (the CPU check of the layout; the kernels do the same)."""
    n, k, f = p.out_features, p.in_features, p.fmt
    if f.bits == 8:
        q = p.low.float()
    else:
        shifts = torch.arange(8, device=p.low.device, dtype=torch.int32) * 4
        q = ((p.low.unsqueeze(-1) >> shifts) & 0xF).reshape(n, k)
        if f.bits > 4:
            per = 32 // (f.bits - 4)
            hs = torch.arange(per, device=p.low.device, dtype=torch.int32) * (f.bits - 4)
            q = q | (((p.high.unsqueeze(-1) >> hs) & ((1 << (f.bits - 4)) - 1)).reshape(n, k) << 4)
        q = q.float()
    v = (q - f.offset).reshape(n, k // f.group, f.group)
    per_block = f.block // f.group
    s = p.d.float().repeat_interleave(per_block, dim=1)
    if f.has_sc:
        s = s * p.sc.float()
    w = s.unsqueeze(-1) * v
    if f.min_mode == 1:
        w = w + p.dm.float().unsqueeze(-1)
    elif f.min_mode == 2:
        w = w - (p.dm.float().repeat_interleave(per_block, dim=1) * p.mn.float()).unsqueeze(-1)
    return w.reshape(n, k)
