"""Self-attention: fused qkv projection, optional per-head q/k norm, rotary, backend, output proj."""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk.attention import AttentionLayerInfo
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.layers.norm import RMSNorm
from jackfield.sdk.layers.rotary import RotaryEmbedding
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.model_config import ModelConfig


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, ctx: ModelBuildContext, prefix: str,
                 qkv_bias: bool = False, qk_norm: bool = False, sliding_window: int | None = None,
                 max_positions: int | None = None, rotary: RotaryEmbedding | None = None):
        super().__init__()
        c, tp = config, ctx.tp
        q_start, heads = tp.split(c.num_heads, "attention heads")
        kv_start, kv_heads = tp.head_share(c.num_kv_heads)
        self.num_heads, self.num_kv_heads = heads, kv_heads
        self.q_size, self.kv_size = heads * c.head_dim, kv_heads * c.head_dim
        self.head_dim = c.head_dim
        d = c.head_dim  # this rank's rows of q, k and v (whole heads)
        self.qkv_proj = Linear(c.hidden_size, (c.num_heads * d, c.num_kv_heads * d, c.num_kv_heads * d), ctx,
                               f"{prefix}.qkv_proj", bias=qkv_bias, shard_ids=("q", "k", "v"), parallel="column",
                               shard_slices=((q_start * d, heads * d), (kv_start * d, kv_heads * d),
                                             (kv_start * d, kv_heads * d)))
        self.o_proj = Linear(c.num_heads * d, (c.hidden_size,), ctx, f"{prefix}.o_proj", parallel="row")
        if qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, ctx.dtype, ctx.device)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, ctx.dtype, ctx.device)
        self.qk_norm = qk_norm
        self.rotary = rotary or RotaryEmbedding(c.head_dim, c.rope, max_positions or c.max_position_embeddings,
                                                ctx.dtype, ctx.device)
        self.k_scale: float | None = None  # KV-cache scales from the checkpoint (set_kv_scale), if any
        self.v_scale: float | None = None
        self.info = AttentionLayerInfo(layer_id=layer_id, num_heads=heads, num_kv_heads=kv_heads,
                                       head_dim=c.head_dim, scaling=c.head_dim ** -0.5, sliding_window=sliding_window)

    def set_kv_scale(self, which: str, value: float) -> None:
        """Record a checkpoint's KV-cache scale: which is "k", "v" or "kv" (one scale for both)."""
        if which in ("k", "kv"):
            self.k_scale = value
        if which in ("v", "kv"):
            self.v_scale = value

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        return self._attend(positions, self.qkv_proj(hidden), fb)

    def forward_normed(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                       norm: nn.Module, fb: ForwardBatch):
        """Attention on norm(hidden + residual), the norm fused into qkv_proj where the linear method
        can; returns (output, hidden + residual)."""
        qkv, residual = self.qkv_proj.forward_normed(hidden, residual, norm)
        return self._attend(positions, qkv, fb), residual

    def _attend(self, positions: torch.Tensor, qkv: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        backend = fb.attn_backend
        norms = (self.q_norm, self.k_norm) if self.qk_norm else None
        if backend.kv_stored_by_pool and self.rotary.forward_and_store(positions, q, k, v, fb.kv_pool,
                                                                      self.info.layer_id, fb.out_cache_loc, norms):
            out = backend.forward(q, k, v, self.info, fb, save_kv=False)  # q: a row-strided view of qkv
        else:
            if self.qk_norm:
                t = q.shape[0]
                q = self.q_norm(q.reshape(t, -1, self.head_dim)).reshape(t, -1)
                k = self.k_norm(k.reshape(t, -1, self.head_dim)).reshape(t, -1)
            q, k = self.rotary(positions, q, k)
            out = backend.forward(q, k, v.contiguous(), self.info, fb)
        return self.o_proj(out)
