"""The Llama-family decoder: embedding, N x (attention + MLP) with pre-norms, final norm.

Dense architectures differ only in DecoderOptions (qkv bias, q/k norm, sliding window), so each
model plugin is a few lines on top of this module. MoE and MLA architectures also hand in a
`LayerParts` callable that builds a layer's own attention or MLP (an SDK SparseMoE, MLAAttention);
any module with the same `forward_normed` signature fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.layers.attention import SelfAttention
from jackfield.sdk.layers.embedding import VocabEmbedding
from jackfield.sdk.layers.mlp import GatedMLP
from jackfield.sdk.layers.norm import RMSNorm
from jackfield.sdk.layers.rotary import RotaryEmbedding
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.model_config import ModelConfig


@dataclass(frozen=True)
class DecoderOptions:
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    max_positions: int | None = None


# (layer_id, layer prefix, shared rotary) -> (attention, mlp); None keeps the Llama default of either
LayerParts = Callable[[int, str, RotaryEmbedding], "tuple[nn.Module | None, nn.Module | None]"]


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, ctx: ModelBuildContext, opts: DecoderOptions, prefix: str,
                 rotary: RotaryEmbedding | None = None, parts: LayerParts | None = None):
        super().__init__()
        attn, mlp = parts(layer_id, prefix, rotary) if parts else (None, None)
        if attn is None:
            window = opts.sliding_window
            if window and config.layer_types and config.layer_types[layer_id] != "sliding_attention":
                window = None  # a full-attention layer of a model that mixes both (Qwen2 max_window_layers)
            attn = SelfAttention(config, layer_id, ctx, f"{prefix}.self_attn", qkv_bias=opts.qkv_bias,
                                 qk_norm=opts.qk_norm, sliding_window=window,
                                 max_positions=opts.max_positions, rotary=rotary)
        self.self_attn = attn
        self.mlp = mlp or GatedMLP(config.hidden_size, config.intermediate_size, ctx, f"{prefix}.mlp", config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx.dtype, ctx.device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx.dtype, ctx.device)

    def forward(self, positions, hidden, residual, fb: ForwardBatch):
        """(hidden, residual) -> (hidden, residual): the pre-norms run inside the projections that
        follow them (fused into one kernel where the linear method has one)."""
        hidden, residual = self.self_attn.forward_normed(positions, hidden, residual, self.input_layernorm, fb)
        return self.mlp.forward_normed(hidden, residual, self.post_attention_layernorm)


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ModelBuildContext, opts: DecoderOptions, prefix: str = "model",
                 parts: LayerParts | None = None):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, ctx.dtype, ctx.device, tp=ctx.tp)
        # one cos/sin cache for all layers (it is [max_positions, rotary_dim] floats); MLA rotates
        # only its qk_rope_head_dim-wide part of each head
        rotated = config.mla.qk_rope_head_dim if config.mla else config.head_dim
        rotary = RotaryEmbedding(rotated, config.rope, opts.max_positions or config.max_position_embeddings,
                                 ctx.dtype, ctx.device)
        self.layers = nn.ModuleList(DecoderLayer(config, i, ctx, opts, f"{prefix}.layers.{i}", rotary, parts)
                                    for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx.dtype, ctx.device)
        self.capture_layers: tuple[int, ...] = ()
        """Layers whose input (the residual stream) a forward leaves, concatenated, in
        fb.extras["aux_hidden"]: EAGLE-3 draft heads read them (set by the speculative decoder)."""

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        aux = []
        for i, layer in enumerate(self.layers):
            for _ in range(self.capture_layers.count(i)):
                aux.append(hidden if residual is None else hidden + residual)
            hidden, residual = layer(positions, hidden, residual, fb)
        if aux:
            fb.extras["aux_hidden"] = torch.cat(aux, dim=-1)
        hidden, _ = self.norm(hidden, residual)
        return hidden
