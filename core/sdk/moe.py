"""Mixture-of-experts dispatchers: route tokens to their top-k experts and combine the results."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    renormalize: bool = True
    activation: str = "silu"


class MoEDispatcher(Component):
    kind: ClassVar[str] = "moe"

    def __init__(self, config: MoEConfig):
        self.config = config

    @abstractmethod
    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
        """hidden [T, H], router_logits [T, E], w13 [E, 2I, H] (gate;up), w2 [E, H, I] -> [T, H]."""
