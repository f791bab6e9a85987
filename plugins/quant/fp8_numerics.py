"""FP8 (float8_e4m3fn) quantization in plain PyTorch: the quantizers, and the reference numerics.

Weights are quantized symmetrically per tensor, per output channel, or per [block_n, block_k]
block (DeepSeek-V3's 128x128 layout, whose scales checkpoints store as `weight_scale_inv`, the
factor that multiplies the FP8 values back). Activations are quantized dynamically, per token
(one scale per row) or per token and group of `block_k` columns (the 1x128 groups that pair with
128x128 weight blocks). Every scale is amax / 448, so the largest magnitude maps to FP8's largest
finite value; a zero row or block gets scale 1 (its codes are zero either way).

The GPU kernels (fp8_kernels.py) are tested against `w8a8_reference`, which dequantizes both
operands exactly and multiplies in float32; CPUs run it directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def _scale(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale saturated to the FP8 range and rounded to FP8 (scale broadcasts against x)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def quantize_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N, K] FP8, scale [] float32)."""
    scale = _scale(w.abs().amax().float())
    return to_fp8(w, scale), scale


CHUNK_ELEMENTS = 4 << 20  # rows quantized at a time: float32 temporaries of 16 MB at most


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N, K] FP8, scale [N] float32): one scale per output row.

    Rows are quantized a chunk at a time into codes allocated first: a plain checkpoint is
    quantized on the GPU while loading, and whole-weight float32 temporaries would leave the
    allocator's segments holding codes amid freed space the KV pool cannot use."""
    q = torch.empty(w.shape, dtype=FP8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, w.shape[1]))
    for i in range(0, w.shape[0], rows):
        part = w[i:i + rows]
        scale[i:i + rows] = _scale(part.abs().amax(dim=1).float())
        q[i:i + rows] = to_fp8(part, scale[i:i + rows, None])
    return q, scale


def expand_blocks(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Per-block scales [ceil(N/bn), ceil(K/bk)] as a per-element [N, K] tensor."""
    bn, bk = block
    return scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:shape[0], :shape[1]]


def quantize_blockwise(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N, K] FP8, scale [ceil(N/bn), ceil(K/bk)] float32); partial edge blocks allowed."""
    n, k = w.shape
    bn, bk = block
    nb, kb = -(-n // bn), -(-k // bk)
    padded = F.pad(w.float().abs(), (0, kb * bk - k, 0, nb * bn - n))
    scale = _scale(padded.view(nb, bn, kb, bk).amax(dim=(1, 3)))
    return to_fp8(w, expand_blocks(scale, (n, k), block)), scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] FP8, scale [M, 1] float32) for activations x [M, K]."""
    scale = _scale(x.abs().amax(dim=-1, keepdim=True).float())
    return to_fp8(x, scale), scale


def quantize_per_token_group(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] FP8, scale [M, ceil(K/group)] float32): one scale per row and group of columns."""
    q, scale = quantize_blockwise(x, (1, group))
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """The float32 weight [N, K] that FP8 codes and their scales ([N] per channel, or blocks) stand for."""
    if block is None:
        return q.float() * scale.float()[:, None]
    return q.float() * expand_blocks(scale.float(), tuple(q.shape), block)


def w8a16_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x dequant(W)^T + b in float32 with x not quantized: the numerics of the one-row GEMV that
    CUDA takes at batch-1 decode where the tuner finds it faster than the W8A8 path."""
    return F.linear(x.float(), dequantize_weight(q, scale, block), None if bias is None else bias.float())


def w8a8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = dequant(quant(x)) dequant(W)^T + b in float32, x [M, K] quantized per token (per token and
    group of block[1] columns with block-wise weights): the numerics every FP8 path computes."""
    if block is None:
        xq, xs = quantize_per_token(x)
        xd = xq.float() * xs
    else:
        xq, xs = quantize_per_token_group(x, block[1])
        xd = xq.float() * expand_blocks(xs, tuple(x.shape), (1, block[1]))
    return F.linear(xd, dequantize_weight(q, scale, block), None if bias is None else bias.float())
