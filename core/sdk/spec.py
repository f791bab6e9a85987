"""Speculative decoders: propose draft tokens that the target model verifies in one forward."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class SpecRuntime:
    """What a proposer gets at construction: settings, the target's geometry, and (for draft-model
    and EAGLE proposers) a loader for the draft weights."""

    settings: Any
    model_config: Any
    device: torch.device
    dtype: torch.dtype
    num_draft_tokens: int = 4


@dataclass(frozen=True)
class SpecInput:
    """Per decode step: the running requests' token histories and (EAGLE) target hidden states."""

    req_ids: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    hidden_states: torch.Tensor | None = None


@dataclass(frozen=True)
class DraftProposal:
    """Draft tokens per request: a chain when `parents` is None, else a tree (parent index per
    node, -1 for children of the last verified token)."""

    tokens: torch.Tensor               # [bs, num_draft] int64
    parents: torch.Tensor | None = None  # [num_draft] int64


class SpeculativeDecoder(Component):
    kind: ClassVar[str] = "speculative"
    needs_hidden_states: ClassVar[bool] = False

    def __init__(self, runtime: SpecRuntime):
        self.runtime = runtime

    @abstractmethod
    def propose(self, spec_input: SpecInput) -> DraftProposal:
        ...

    def on_verified(self, req_ids: tuple[str, ...], accepted_lens: torch.Tensor) -> None:
        """Told how many draft tokens of each request were accepted (to advance draft state)."""
