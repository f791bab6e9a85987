"""INT4 group quantization in plain PyTorch: our quantizer, the checkpoint layouts, the reference.

One 4-bit code q in 0..15 per weight, and per (output row, group of `group` input columns) a scale
s and a zero point z: w = (q - z) * s. Asymmetric grids take s = (max - min) / 15 and
z = round(-min / s); symmetric ones s = 2 max|w| / 15 and z = 8 (AutoGPTQ's choice).

Layouts (all int32 words of eight 4-bit values, value i in bits 4i..4i+3):
  internal   qweight [N, K/8], packed along K; scales and zeros [N, K/group] (what kernels read)
  AWQ        qweight [K, N/8] and qzeros [K/group, N/8], packed along N in the order
             0, 2, 4, 6, 1, 3, 5, 7 (AutoAWQ's GEMM layout); scales [K/group, N]
  GPTQ       qweight [K/8, N] packed along K; qzeros [K/group, N/8] packed along N and stored
             minus one in the original format (`checkpoint_format: gptq`, not in gptq_v2);
             scales [K/group, N]; g_idx [K], the group of each input column (act order, desc_act)
  compressed-tensors pack-quantized: weight_packed [N, K/8] packed along K with values offset by
             +8 (signed codes); weight_scale [N, K/group]; weight_zero_point [N/8, K/group] packed
             along N (asymmetric only); weight_g_idx [K] (act order)
With act order, input column k belongs to group g_idx[k]; the loader sorts the columns by group
(`act_order_perm`), so kernels see contiguous groups and permute the activations to match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)        # packed slot i holds column AWQ_ORDER[i] of each 8
AWQ_REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)      # column j sits in slot AWQ_REVERSE[j]
SHIFTS = tuple(range(0, 32, 4))


def quantize(w: torch.Tensor, group: int, symmetric: bool = False,
             g_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest INT4 of w [N, K]: (codes [N, K] int32 0..15, scales [N, G] float32, zeros
    [N, G] int32) with G = K / group; `g_idx` [K] assigns columns to groups (act order)."""
    n, k = w.shape
    perm = None if g_idx is None else torch.argsort(g_idx.long(), stable=True)
    wg = (w.float() if perm is None else w.float()[:, perm]).reshape(n, -1, group)  # groups contiguous
    if symmetric:
        scale = wg.abs().amax(-1) * 2 / 15
        zero = torch.full_like(scale, 8)
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        scale = (hi - lo) / 15
        zero = torch.round(-lo / torch.where(scale > 0, scale, 1)).clamp(0, 15)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(wg / scale[..., None] + zero[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    if perm is not None:
        q = torch.empty_like(q).index_copy_(1, perm, q)  # back to the checkpoint's column order
    return q, scale, zero.to(torch.int32)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor | None) -> torch.Tensor:
    """The float32 weight [N, K] of codes q [N, K], scales / zeros [N, G] and column groups g_idx
    [K] (None: contiguous groups of K / G columns)."""
    if g_idx is None:
        n, k = q.shape
        groups = q.float().view(n, scales.shape[1], -1)
        return ((groups - zeros.float()[..., None]) * scales.float()[..., None]).view(n, k)
    gi = g_idx.long()
    return (q.float() - zeros.float()[:, gi]) * scales.float()[:, gi]


# ---- packing: int32 words of eight 4-bit values ------------------------------------------------------
def pack(q: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Pack codes 0..15 along `dim` (its size a multiple of 8): slot i of word j holds element
    8j + order[i]."""
    q = q.movedim(dim, -1).to(torch.int32)
    words = q.reshape(*q.shape[:-1], -1, 8)
    packed = words[..., order[0]].clone()
    for i in range(1, 8):
        packed |= words[..., order[i]] << SHIFTS[i]  # int32 bits, as the formats store them
    return packed.movedim(-1, dim).contiguous()


def unpack(packed: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """The inverse of `pack` (same order): int32 codes 0..15, `dim` eight times longer."""
    p = packed.movedim(dim, -1)
    values = (p.unsqueeze(-1) >> torch.tensor(SHIFTS, dtype=torch.int32, device=p.device)) & 0xF  # [.., word, slot]
    if order != tuple(range(8)):
        values = values[..., [order.index(j) for j in range(8)]]
    return values.reshape(*p.shape[:-1], -1).movedim(-1, dim).contiguous()


def act_order_perm(g_idx: torch.Tensor, group: int) -> torch.Tensor | None:
    """The column order that makes act-order groups contiguous, or None when g_idx already is
    k // group. Raises ValueError when the groups are not `group` columns each."""
    k = g_idx.numel()
    natural = torch.arange(k, device=g_idx.device) // group
    if torch.equal(g_idx.long(), natural):
        return None
    perm = torch.argsort(g_idx.long(), stable=True)
    if not torch.equal(g_idx.long()[perm], natural):
        raise ValueError(f"g_idx does not assign {group} columns to each group; such act-order checkpoints "
                         "are not supported")
    return perm


# ---- checkpoint layouts <-> internal [N, K/8] + [N, G] ---------------------------------------------
def to_awq(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM tensors (qweight, qzeros, scales in float16) of codes q [N, K], scales/zeros [N, G]."""
    return {"qweight": pack(q.t(), 1, AWQ_ORDER), "qzeros": pack(zeros.t(), 1, AWQ_ORDER),
            "scales": scales.t().contiguous().half()}


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """(codes [N, K], scales [N, G], zeros [N, G]) of AutoAWQ GEMM tensors."""
    return unpack(qweight, 1, AWQ_ORDER).t(), scales.t(), unpack(qzeros, 1, AWQ_ORDER).t()


def to_gptq(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
            v2: bool = False) -> dict[str, torch.Tensor]:
    """GPTQ tensors of codes q [N, K], scales/zeros [N, G] (zeros stored minus one unless v2)."""
    stored = zeros.t() - (0 if v2 else 1)
    return {"qweight": pack(q.t(), 0), "qzeros": pack(stored & 0xF, 1), "scales": scales.t().contiguous().half(),
            "g_idx": g_idx.to(torch.int32)}


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, v2: bool = False):
    """(codes [N, K], scales [N, G], zeros [N, G]) of GPTQ tensors."""
    zeros = unpack(qzeros, 1)
    if not v2:
        zeros = (zeros + 1) & 0xF  # the original format stores zero - 1 (wrapping 0 to 15)
    return unpack(qweight, 0).t(), scales.t(), zeros.t()


def to_compressed(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """compressed-tensors pack-quantized tensors (zeros None: symmetric, codes centred on 8)."""
    out = {"weight_packed": pack(q, 1), "weight_scale": scales.contiguous().to(torch.bfloat16),
           "weight_shape": torch.tensor(list(q.shape), dtype=torch.int32)}
    if zeros is not None:
        out["weight_zero_point"] = pack(zeros, 0)
    return out


def from_compressed(packed: torch.Tensor, scales: torch.Tensor, zero_point: torch.Tensor | None):
    """(codes [N, K], scales [N, G], zeros [N, G]) of compressed-tensors pack-quantized tensors."""
    zeros = unpack(zero_point, 0) if zero_point is not None else torch.full(scales.shape, 8, dtype=torch.int32,
                                                                             device=scales.device)
    return unpack(packed, 1), scales, zeros


def reference_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     group: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] times the dequantized weight, in float32 (contiguous groups)."""
    return F.linear(x.float(), dequantize(q, scales, zeros, None), None if bias is None else bias.float())
