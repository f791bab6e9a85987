"""PyTorch's CUDA INT4 kernel (`aten._weight_int4pack_mm`: gpt-fast's tinygemm, tensor-core
m16n8k16 tiles with the codes dequantized in registers) for the INT4 layers' few-row matmuls, and
its weight layout, which the Triton dequantize kernel reads too (int4_kernels.py, `TG`), so a layer
keeps one copy of its codes.

Layout (`_convert_weight_to_int4pack` with 8 inner k-tiles): int32 [N/8, K/128, 32, 4], word
(nt, ko, t, j) holding eight codes of row 8 nt + t // 4. Its nibble p = 4 parity + 2 a + b holds
column

    128 ko + 32 j + 16 a + 8 b + 2 (t % 4) + parity

Row n's words of one 128-column block ko are contiguous, 16 of them (w16 = 4 (t % 4) + j) at int32
(n // 8) K + 128 ko + 16 (n % 8) + w16; read in that order, code p of word w16 is "virtual" column
8 w16 + p of the block, the column above (`column_of`). A 128-column block is one group for groups
of 128 and 256: those two group sizes fit.

Numerics: tinygemm takes bf16 activations and a [K/group, N, 2] bf16 table of (scale, offset) with
w = (q - 8) scale + offset; an INT4 layer's w = (q - z) s maps to offset (8 - z) s, each rounded to
bf16 (0.4% of a scale at most, against a quantization step of one scale).
"""
from __future__ import annotations

import functools

import torch

INNER_K_TILES = 8
ROWS = 32          # x with at most this many rows goes through tinygemm (two m16 tiles; beyond, dequantize + cuBLAS)
GROUPS = (128, 256)


@functools.cache
def _ops_available(index: int) -> bool:
    ops = torch.ops.aten
    return (torch.version.hip is None and hasattr(ops, "_weight_int4pack_mm")
            and hasattr(ops, "_convert_weight_to_int4pack") and torch.cuda.get_device_capability(index) >= (8, 0))


def fits(device: torch.device, dtype: torch.dtype, n: int, k: int, group: int) -> bool:
    """Whether a layer [n, k] with this group, computing in `dtype` on `device`, can use the layout."""
    if device.type != "cuda" or dtype != torch.bfloat16 or group not in GROUPS:
        return False
    return n % 8 == 0 and k % group == 0 and _ops_available(device.index if device.index is not None else 0)


def pack(q: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] (0..15) -> int32 [N/8, K/128, 32, 4], what `_convert_weight_to_int4pack(.., 8)`
    makes of them (written out here so that the CPU tests can check the layout)."""
    n, k = q.shape
    # column = 128 ko + 32 j + 16 a + 8 b + 2 t_lo + parity; row = 8 nt + t_hi
    q8 = q.to(torch.int32).reshape(n // 8, 8, k // 128, 4, 2, 2, 4, 2)  # nt t_hi ko j a b t_lo parity
    codes = q8.permute(0, 2, 1, 6, 3, 7, 4, 5).reshape(n // 8, k // 128, 32, 4, 8)  # nibble p = 4 parity + 2 a + b
    words = codes[..., 0].clone()
    for p in range(1, 8):
        words |= codes[..., p] << (4 * p)
    return words.contiguous()


def pack_on_device(q: torch.Tensor, inner_k_tiles: int = INNER_K_TILES) -> torch.Tensor:
    """`pack` by PyTorch's own CUDA conversion (its byte input holds column 2i in the high nibble);
    other inner k-tile counts (2, 4) are for benchmarks/studies/gemv_bandwidth.py."""
    pairs = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)


def column_of(v: torch.Tensor) -> torch.Tensor:
    """The real column of virtual column v (8 w + p of a row's virtual word w, nibble p)."""
    ko, r = v // 128, v % 128
    t_lo, j, p = r // 32, (r // 8) % 4, r % 8
    return ko * 128 + j * 32 + ((p // 2) % 2) * 16 + (p % 2) * 8 + t_lo * 2 + p // 4


def unpack(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of `pack`: codes [N, K] int32."""
    nibbles = (words.unsqueeze(-1) >> (4 * torch.arange(8, device=words.device, dtype=torch.int32))) & 0xF
    virtual = nibbles.reshape(n // 8, k // 128, 8, 4, 4, 8).permute(0, 2, 1, 3, 4, 5).reshape(n, k)
    out = torch.empty_like(virtual)
    out[:, column_of(torch.arange(k, device=words.device))] = virtual
    return out


def scale_table(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """[N, G] scales and zeros -> tinygemm's [G, N, 2] bf16 (scale, (8 - zero) scale)."""
    s = scales.float()
    return torch.stack([s, (8 - zeros.float()) * s], -1).transpose(0, 1).contiguous().to(torch.bfloat16)


def matmul(x: torch.Tensor, words: torch.Tensor, group: int, table: torch.Tensor) -> torch.Tensor:
    """x [M, K] bf16 contiguous (M <= ROWS is what it is fast for) -> [M, N] bf16."""
    return torch.ops.aten._weight_int4pack_mm(x, words, group, table)
