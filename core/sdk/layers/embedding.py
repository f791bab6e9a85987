"""Vocabulary embedding and the LM head (tied to the embedding or separate)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Projects hidden states to vocabulary logits; `tied_to` shares the embedding's weight.

    With a `method` (a quantization method's `lm_head_method()`) the head owns its weight through
    that LinearMethod instead, tied or not: the loader then hands it an `lm_head.weight` (for a tied
    model, the embedding's checkpoint tensor) and `forward` is the method's `apply`."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device, tied_to: VocabEmbedding | None = None,
                 method=None):
        super().__init__()
        self.tied_to, self.method, self.vocab_size = tied_to, method, vocab_size
        if method is not None:
            method.create_weights(self, hidden_size, vocab_size, False, dtype, device)
        elif tied_to is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device))

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> None:
        if self.method is None:
            if tuple(tensor.shape) != tuple(self.weight.shape):
                raise ValueError(f"shape {tuple(tensor.shape)} does not fit {tuple(self.weight.shape)}")
            with torch.no_grad():
                self.weight.copy_(tensor)
        else:
            self.method.load(self, param_name, tensor, 0, self.vocab_size)

    def process_weights_after_loading(self) -> None:
        if self.method is not None:
            self.method.process_weights_after_loading(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.method is not None:
            return self.method.apply(self, hidden)
        weight = self.tied_to.weight if self.tied_to is not None else self.weight
        return F.linear(hidden, weight)
