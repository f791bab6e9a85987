"""Vocabulary embedding and the LM head (tied to the embedding or separate).

Under tensor parallelism (`tp`, jackfield.sdk.parallel) both are vocab-parallel: rank r holds rows
[r * ceil(V / size), ...) of the vocabulary (the last rank's tail padded with zero rows). The
embedding looks up the tokens it holds, zeroes the others and all-reduces; the head computes its
slice of the logits and all-gathers them, so every rank ends with the whole [tokens, V] logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jackfield.sdk.layers.linear import narrow_features
from jackfield.sdk.parallel import SINGLE, ParallelGroup


class VocabShard:
    """This rank's rows of a vocab-parallel table: [start, start + rows) of `vocab`, `local` rows held."""

    def __init__(self, vocab_size: int, tp: ParallelGroup):
        self.vocab_size, self.tp = vocab_size, tp
        self.local = -(-vocab_size // tp.size)
        self.start = min(tp.rank * self.local, vocab_size)
        self.rows = min(self.local, vocab_size - self.start)

    def part(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-vocabulary tensor [V, ...] (not padded)."""
        if tuple(full.shape[:1]) != (self.vocab_size,):
            raise ValueError(f"shape {tuple(full.shape)} does not fit a vocabulary of {self.vocab_size}")
        return full[self.start:self.start + self.rows]

    def padded_part(self, full: torch.Tensor) -> torch.Tensor:
        """`part`, padded with zero rows to the `local` rows every rank holds."""
        return F.pad(self.part(full), (0, 0, 0, self.local - self.rows))

    def copy_into(self, param: torch.Tensor, full: torch.Tensor) -> None:
        part = self.part(full)
        if tuple(part.shape[1:]) != tuple(param.shape[1:]):
            raise ValueError(f"shape {tuple(full.shape)} does not fit {(self.vocab_size, *param.shape[1:])}")
        with torch.no_grad():
            param[:self.rows].copy_(part)


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device, tp: ParallelGroup = SINGLE):
        super().__init__()
        self.shard = VocabShard(vocab_size, tp)
        self.tp = tp
        self.dummy_shapes = {"weight": (vocab_size, hidden_size)}  # random weights: drawn whole, then cut
        self.weight = nn.Parameter(torch.zeros(self.shard.local, hidden_size, dtype=dtype, device=device))

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> None:
        self.shard.copy_into(self.weight, tensor)

    def dummy_part(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return self.shard.padded_part(full)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.shard.start
        held = (local >= 0) & (local < self.shard.rows)
        out = F.embedding(local.masked_fill(~held, 0), self.weight).masked_fill(~held.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)


class LMHead(nn.Module):
    """Projects hidden states to vocabulary logits; `tied_to` shares the embedding's weight.

    With a `method` (a quantization method's `lm_head_method()`) the head owns its weight through
    that LinearMethod instead, tied or not: the loader then hands it an `lm_head.weight` (for a tied
    model, the embedding's checkpoint tensor) and `forward` is the method's `apply`."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device, tied_to: VocabEmbedding | None = None,
                 method=None, tp: ParallelGroup = SINGLE):
        super().__init__()
        self.tied_to, self.method, self.vocab_size = tied_to, method, vocab_size
        self.shard, self.tp = VocabShard(vocab_size, tp), tp
        self.dummy_shapes = {"weight": (vocab_size, hidden_size)}
        if method is not None:
            method.create_weights(self, hidden_size, self.shard.local, False, dtype, device)
        elif tied_to is None:
            self.weight = nn.Parameter(torch.zeros(self.shard.local, hidden_size, dtype=dtype, device=device))

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> None:
        if self.method is None:
            self.shard.copy_into(self.weight, tensor)
            return
        if not isinstance(tensor, torch.Tensor):  # a format's own weight object (GGUFWeight): cut by rows
            return self.method.load(self, param_name, self.shard.part(tensor), 0, self.shard.rows)
        vocab_dim, _ = self.method.shard_dims(param_name, tensor)  # a quantized format's own layout
        if vocab_dim is not None:
            s = self.shard
            if s.vocab_size % tensor.shape[vocab_dim]:
                raise ValueError(f"lm_head.{param_name} of shape {tuple(tensor.shape)} does not fit a vocabulary of "
                                 f"{s.vocab_size}")
            tensor = narrow_features(tensor, vocab_dim, s.vocab_size, s.start, s.rows, f"lm_head.{param_name}")
        self.method.load(self, param_name, tensor, 0, self.shard.rows)

    def dummy_part(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return self.shard.padded_part(full)

    def process_weights_after_loading(self) -> None:
        if self.method is not None:
            self.method.process_weights_after_loading(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.method is not None:
            logits = self.method.apply(self, hidden)
        else:
            logits = F.linear(hidden, self.tied_to.weight if self.tied_to is not None else self.weight)
        if not self.tp.enabled:
            return logits
        return self.tp.all_gather(logits, dim=-1)[..., :self.vocab_size]
