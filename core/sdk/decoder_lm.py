"""DecoderCausalLM: a CausalLM made of the SDK's Llama-family decoder plus an LM head.

Dense architecture plugins subclass it and override `decoder_options` only; MoE and MLA ones also
override `layer_parts` to build a layer's own attention or MLP.
"""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.layers.decoder import DecoderModel, DecoderOptions
from jackfield.sdk.layers.embedding import LMHead
from jackfield.sdk.layers.rotary import RotaryEmbedding
from jackfield.sdk.model import CausalLM, ModelBuildContext
from jackfield.sdk.model_config import ModelConfig


class DecoderCausalLM(CausalLM):
    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        return DecoderOptions(qkv_bias=config.attention_bias, sliding_window=config.sliding_window)

    def __init__(self, config: ModelConfig, ctx: ModelBuildContext, max_positions: int | None = None):
        super().__init__(config, ctx)
        opts = self.decoder_options(config)
        if max_positions:
            opts = DecoderOptions(opts.qkv_bias, opts.qk_norm, opts.sliding_window, max_positions)
        self.model = DecoderModel(config, ctx, opts, parts=lambda i, prefix, rotary: self.layer_parts(
            config, ctx, i, prefix, rotary))
        tied = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, ctx.dtype, ctx.device, tied_to=tied,
                              method=ctx.quant.lm_head_method(), tp=ctx.tp)

    def layer_parts(self, config: ModelConfig, ctx: ModelBuildContext, layer_id: int, prefix: str,
                    rotary: RotaryEmbedding) -> tuple[nn.Module | None, nn.Module | None]:
        """(attention, mlp) of layer `layer_id` (module prefix `prefix`); None keeps the Llama default."""
        return None, None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        return self.model(input_ids, positions, fb)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
