"""torch_native: the reference LoRA backend in plain PyTorch, on any device.

Prefill and mixed batches loop over their segments on the host: each segment's tokens times its
slot's A, then each slice's B, added into the base output. Decode batches gather every token's A
and B by slot and run two batched matmuls without reading anything on the host, so they can be
captured in CUDA graphs. Updates are computed in float32 and added in the output's dtype.
"""
from __future__ import annotations

import torch

from jackfield.sdk import Capabilities, LoRABackend, LoRAWeights, hookimpl


class TorchNativeLoRA(LoRABackend):
    name = "torch_native"
    priority = 10
    capabilities = Capabilities(devices=("cpu", "cuda"))
    description = "Reference LoRA in plain PyTorch: a loop over segments, a gather per token in decode"
    supports_cuda_graph = True

    def apply(self, weights: LoRAWeights, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        batch = self.batch
        if batch.decode:
            return self._apply_gathered(weights, x, base_out)
        r = weights.max_rank
        for start, n, slot in batch.segments:
            if slot < 0:
                continue
            xa = x[start:start + n].float() @ weights.a[slot].float().T          # [n, slices * r]
            scale = batch.scalings[slot]
            for j, (offset, size) in enumerate(weights.slices):
                delta = xa[:, j * r:(j + 1) * r] @ weights.b[slot, offset:offset + size].float().T
                base_out[start:start + n, offset:offset + size] += (delta * scale).to(base_out.dtype)
        return base_out

    def _apply_gathered(self, weights: LoRAWeights, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        slots = self.batch.token_slots.long()
        valid = slots >= 0
        idx = slots.clamp(min=0)
        scale = (self.batch.scalings[idx] * valid).unsqueeze(1)                # [T, 1], 0 for the base model
        xa = torch.bmm(weights.a[idx].float(), x.float().unsqueeze(2)).squeeze(2)  # [T, slices * r]
        r = weights.max_rank
        for j, (offset, size) in enumerate(weights.slices):
            b = weights.b[idx, offset:offset + size].float()                   # [T, size, r]
            delta = torch.bmm(b, xa[:, j * r:(j + 1) * r].unsqueeze(2)).squeeze(2)
            base_out[:, offset:offset + size] += (delta * scale).to(base_out.dtype)
        return base_out


@hookimpl
def jackfield_register_lora_backends(register):
    register(TorchNativeLoRA)
