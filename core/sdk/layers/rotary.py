"""Rotary position embedding (NeoX / HF-Llama layout) with default, linear, llama3 and yarn scaling."""
from __future__ import annotations

import math

import torch
from torch import nn

from jackfield.kernels import fused_available
from jackfield.sdk.kv_cache import KVPool
from jackfield.sdk.model_config import RopeConfig


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_ctx = rope.original_max_position_embeddings or 8192
    low_wavelen = old_ctx / rope.low_freq_factor
    high_wavelen = old_ctx / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_ctx / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 0.1 * mscale * math.log(scale) + 1.0 if scale > 1 else 1.0


def _yarn_inv_freq(rope: RopeConfig, max_pos: int) -> tuple[torch.Tensor, float]:
    dim, base, factor = rope.rotary_dim, rope.theta, rope.factor
    orig = rope.original_max_position_embeddings or max_pos
    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation = 1.0 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attention)


def rope_inv_freq(rope: RopeConfig, max_pos: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [rotary_dim/2] and the cos/sin magnitude scale for one RopeConfig."""
    dim = rope.rotary_dim
    inv = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = rope.scaling_type
    if kind is None:
        return inv, 1.0
    if kind == "linear":
        return inv / rope.factor, 1.0
    if kind == "llama3":
        return _llama3_inv_freq(inv, rope), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(rope, max_pos)
    raise ValueError(f"unsupported rope scaling type '{kind}' (supported: default, linear, llama3, yarn)")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, rope: RopeConfig, max_pos: int, dtype: torch.dtype, device):
        super().__init__()
        self.head_dim, self.rotary_dim = head_dim, rope.rotary_dim
        inv, scale = rope_inv_freq(rope, max_pos)
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
        cache = torch.cat([freqs.cos() * scale, freqs.sin() * scale], dim=-1)
        self.register_buffer("cos_sin_cache", cache.to(dtype=torch.float32, device=device), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq*D], k: [T, Hk*D] -> rotated q and k of the same shapes (in place on CUDA)."""
        if fused_available(q):
            from jackfield.kernels.rotary import rope_inplace

            rope_inplace(positions, q, k, self.cos_sin_cache, self.head_dim, self.rotary_dim)
            return q.contiguous(), k.contiguous()
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def forward_and_store(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          pool: KVPool, layer_id: int, loc: torch.Tensor,
                          qk_norm: tuple[nn.Module, nn.Module] | None = None) -> bool:
        """Rotate q and k in place and write k, v into `pool` at slots `loc`, in one fused kernel;
        `qk_norm` (the q and k per-head RMSNorm modules) norms q and k in place first, in the same
        kernel. Returns False, having done nothing, where that kernel does not apply (not CUDA,
        partial rotary, no Triton); the caller then norms, uses forward() and lets the backend store K/V."""
        if not (fused_available(q) and self.rotary_dim == self.head_dim and k.stride(1) == 1 and v.stride(1) == 1):
            return False
        from jackfield.kernels.rotary import QKNorm, rope_inplace_and_store

        norm = None
        if qk_norm is not None:
            qn, kn = qk_norm
            if qn.eps != kn.eps:
                return False
            norm = QKNorm(qn.weight, kn.weight, qn.eps)
        rope_inplace_and_store(positions, q, k, v, self.cos_sin_cache, self.head_dim, loc,
                               pool.k_buffer(layer_id), pool.v_buffer(layer_id),
                               1.0 / pool.k_scales[layer_id], 1.0 / pool.v_scales[layer_id], norm)
        return True

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        x = x.view(t, -1, self.head_dim)
        rot, rest = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        x1, x2 = rot.float().chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
        if rest.shape[-1]:
            out = torch.cat([out, rest], dim=-1)
        return out.reshape(t, -1)
