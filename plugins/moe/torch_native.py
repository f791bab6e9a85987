"""torch_native: the reference MoE dispatcher in plain PyTorch (any device).

Routing is the SDK's reference `route`; the experts run one at a time over the tokens routed to
them, each as two matmuls in float32 for the reference's accuracy (block-wise FP8 experts
dequantized first: `ExpertWeights.dequantized`). Fast dispatchers are tested
against this one. It reads the routing on the host (one device sync per layer), so it is not for
CUDA graphs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jackfield.sdk import Capabilities, MoEDispatcher, hookimpl


class TorchNativeMoE(MoEDispatcher):
    name = "torch_native"
    priority = 10
    capabilities = Capabilities(devices=("cpu", "cuda"), features=frozenset({"silu"}))
    description = "Reference MoE: a loop over the experts in plain PyTorch"
    supports_cuda_graph = False  # reads the per-expert token counts on the host
    weight_formats = ("unquantized", "fp8_block")

    def experts(self, hidden, topk_weights, topk_ids, weights):
        out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        flat_ids = topk_ids.reshape(-1).long()
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=self.config.num_experts).tolist()
        token_of = order // topk_ids.shape[1]
        weight_of = topk_weights.reshape(-1)[order].float()
        start = 0
        for expert, n in enumerate(counts):
            if n == 0:
                continue
            tokens, w = token_of[start:start + n], weight_of[start:start + n]
            start += n
            x = hidden[tokens].float()
            w13, w2 = weights.dequantized(expert)
            gate, up = F.linear(x, w13).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, w2)
            out.index_add_(0, tokens, y * w[:, None])
        return out.to(hidden.dtype)


@hookimpl
def jackfield_register_moe_dispatchers(register):
    register(TorchNativeMoE)
