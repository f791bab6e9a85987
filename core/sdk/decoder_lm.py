"""DecoderCausalLM: a CausalLM made of the SDK's Llama-family decoder plus an LM head.

Architecture plugins subclass it and override `decoder_options` only.
"""
from __future__ import annotations

import torch

from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.layers.decoder import DecoderModel, DecoderOptions
from jackfield.sdk.layers.embedding import LMHead
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
        self.model = DecoderModel(config, ctx, opts)
        tied = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, ctx.dtype, ctx.device, tied_to=tied)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        return self.model(input_ids, positions, fb)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
