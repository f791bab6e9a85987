"""LoRA backends: add per-request low-rank updates to the model's linear layers."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class LoRARuntime:
    model_config: Any
    max_loras: int
    max_rank: int
    dtype: torch.dtype
    device: torch.device


class LoRABackend(Component):
    kind: ClassVar[str] = "lora"

    def __init__(self, runtime: LoRARuntime):
        self.runtime = runtime

    @abstractmethod
    def load_adapter(self, name: str, path: str) -> int:
        """Load an adapter and return its slot id."""

    @abstractmethod
    def prepare(self, adapter_ids: torch.Tensor, extend_seq_lens: torch.Tensor | None) -> None:
        """Once per batch: the adapter slot of each request (-1 = none)."""

    @abstractmethod
    def apply(self, module_name: str, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """Return base_out plus the low-rank update of `module_name` for each token's adapter."""
