"""The gated MLP of Llama-family models: down(silu(gate(x)) * up(x)), gate and up fused.

Under tensor parallelism gate_up is column-parallel (each rank: its slice of gate, then of up) and
down row-parallel (one all-reduce)."""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.model import ModelBuildContext


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, ctx: ModelBuildContext, prefix: str, act: str = "silu"):
        super().__init__()
        if act != "silu":
            raise ValueError(f"unsupported MLP activation '{act}' (supported: silu)")
        self.gate_up_proj = Linear(hidden_size, (intermediate_size, intermediate_size), ctx,
                                   f"{prefix}.gate_up_proj", shard_ids=(0, 1), parallel="column")
        self.down_proj = Linear(intermediate_size, (hidden_size,), ctx, f"{prefix}.down_proj", parallel="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_silu_mul(self.gate_up_proj(x))

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module):
        """The MLP on norm(x + residual), the norm fused into gate_up where the linear method can;
        returns (output, x + residual)."""
        gate_up, residual = self.gate_up_proj.forward_normed(x, residual, norm)
        return self.down_proj.forward_silu_mul(gate_up), residual
