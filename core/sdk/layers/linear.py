"""Linear layers whose weights are owned by the selected quantization method.

One class covers plain and fused projections: `shards` names the checkpoint tensors packed into
this layer's output rows, in order (q/k/v for qkv_proj, 0/1 for gate_up_proj).

When the engine serves LoRA adapters (`ctx.lora` set) a layer whose modules are LoRA targets gets a
LoRALayer that adds each token's adapter update to the base output. The fused norm / activation
paths stay fused when the LoRA backend computes the layer's input inside its own kernels (decode on
the `triton` backend) or no adapter runs in the forward; otherwise they run unfused, since the
adapter needs the layer's input. Without LoRA `self.lora` is None and the layer runs as before.
"""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk.layers.activation import silu_and_mul
from jackfield.sdk.model import ModelBuildContext


class Linear(nn.Module):
    def __init__(self, in_features: int, out_sizes: tuple[int, ...], ctx: ModelBuildContext, prefix: str,
                 bias: bool = False, shard_ids: tuple = (None,)):
        super().__init__()
        assert len(out_sizes) == len(shard_ids)
        self.in_features, self.out_features = in_features, sum(out_sizes)
        self.prefix = prefix
        offsets = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
        self.shards = {sid: (off, size) for sid, off, size in zip(shard_ids, offsets, out_sizes)}
        self.method = ctx.quant.linear_method(prefix)
        self.method.create_weights(self, in_features, self.out_features, bias, ctx.dtype, ctx.device)
        self.lora = ctx.lora.wrap(prefix, in_features, self.shards) if ctx.lora is not None else None

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> None:
        if shard_id not in self.shards:
            raise ValueError(f"{self.prefix}: unexpected shard {shard_id!r} (have {list(self.shards)})")
        offset, size = self.shards[shard_id]
        self.method.load(self, param_name, tensor, offset, size)

    def process_weights_after_loading(self) -> None:
        self.method.process_weights_after_loading(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method.apply(self, x)
        return out if self.lora is None else self.lora.apply(x, out)

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module):
        """This layer on norm(x + residual); returns (output, x + residual). See LinearMethod.apply_normed."""
        lora = self.lora
        if lora is None or lora.fuses_prologue():
            out, residual = self.method.apply_normed(self, x, residual, norm)
            return (out if lora is None else lora.apply_normed(residual, norm, out)), residual
        h, residual = (norm(x), x) if residual is None else norm(x, residual)
        return self.forward(h), residual

    def forward_silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """This layer on silu(gate) * up for x = [gate | up]. See LinearMethod.apply_silu_mul."""
        lora = self.lora
        if lora is None or lora.fuses_prologue():
            out = self.method.apply_silu_mul(self, x)
            return out if lora is None else lora.apply_silu_mul(x, out)
        return self.forward(silu_and_mul(x))
