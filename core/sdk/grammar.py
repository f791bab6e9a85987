"""Grammar backends: constrain sampling to a JSON schema, regex or EBNF grammar.

Two levels, as in vLLM's structured output: the backend (engine-wide, compiles) and a Grammar (per
request, a matcher that fills the allowed-token bitmask and advances on each accepted token).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class GrammarSpec:
    kind: str   # "json_schema" | "json_object" | "regex" | "ebnf"
    value: str


class Grammar:
    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance on a sampled token; False if the token is not allowed."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token mask of the next step into `bitmask[row]`."""

    @abstractmethod
    def is_terminated(self) -> bool:
        ...

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (speculative decoding)."""


class GrammarBackend(Component):
    kind: ClassVar[str] = "grammar"

    def __init__(self, vocab: list[str], vocab_size: int, eos_token_ids: tuple[int, ...]):
        self.vocab, self.vocab_size, self.eos_token_ids = vocab, vocab_size, eos_token_ids

    @abstractmethod
    def compile(self, spec: GrammarSpec) -> Grammar:
        ...

    @abstractmethod
    def allocate_bitmask(self, batch_size: int) -> torch.Tensor:
        ...

    @abstractmethod
    def apply_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        """Set disallowed logits to -inf in place."""
