"""The `triton` MoE dispatcher: fused top-k routing, then the experts as two grouped launches (gate_up
with SiLU-and-mul fused, down with the routing weights) over pairs sorted and aligned to expert
blocks, or, for small batches, two GEMV launches that need no sorting, the first of which also
computes the top-k (triton_kernels/experts.py). Block-wise FP8 experts ("fp8_block") run in the same
kernels, their codes dequantized in registers with the block scales.
Block configurations come from tuned JSON files per (experts, hidden, intermediate, device, weight
format) and batch size (triton_kernels/configs.py, benchmarks/tune_fused_moe.py).

Every step keeps its buffer sizes a function of the batch shape alone and never reads a device
value on the host, so the whole MoE layer is captured in the decode CUDA graphs. Triton is imported
when the dispatcher is constructed. Grouped top-k on expert or group counts that are not powers of
two falls back to the torch reference routing.
"""
from __future__ import annotations

import torch

from jackfield.sdk import Availability, Capabilities, MoEDispatcher, hookimpl, require_cuda


class TritonMoE(MoEDispatcher):
    name = "triton"
    priority = 50
    capabilities = Capabilities(devices=("cuda",), features=frozenset({"silu"}))
    description = "Fused MoE in Triton: fused top-k, aligned grouped GEMMs (GEMV form for small batches)"
    requires_packages = ("triton",)

    @classmethod
    def availability(cls) -> Availability:
        found = super().availability()
        return found if not found.ok else require_cuda()

    def __init__(self, config):
        super().__init__(config)
        from jackfield_plugins.moe import triton_kernels

        self.kernels = triton_kernels
        self.fused_routing = triton_kernels.fused_routing_supported(config.routing, config.num_experts)

    weight_formats = ("unquantized", "fp8_block")

    def _config(self, tokens: int, device, weights) -> dict:
        c = self.config
        return self.kernels.pick_config(tokens, c.num_experts, c.hidden_size, c.intermediate_size, c.top_k, device,
                                        weights.format)

    @staticmethod
    def _scales(weights):
        return None if weights.format == "unquantized" else (weights.w13_scale, weights.w2_scale, weights.block)

    def forward(self, hidden, router_logits, weights, correction_bias=None):
        cfg = self._config(hidden.shape[0], hidden.device, weights)
        if cfg["path"] == "gemv" and self.fused_routing:  # small batch: routing fused into the first GEMV
            return self.kernels.fused_moe_gemv(hidden, router_logits, self.config.routing, correction_bias,
                                               weights.w13, weights.w2, cfg, self._scales(weights))
        return self.experts(hidden, *self.select_experts(router_logits, correction_bias), weights, cfg)

    def select_experts(self, router_logits, correction_bias=None):
        if not self.fused_routing:
            return super().select_experts(router_logits, correction_bias)
        return self.kernels.fused_routing(router_logits, self.config.routing, correction_bias)

    def experts(self, hidden, topk_weights, topk_ids, weights, config: dict | None = None):
        config = config or self._config(hidden.shape[0], hidden.device, weights)
        return self.kernels.fused_experts(hidden, weights.w13, weights.w2, topk_weights, topk_ids.to(torch.int32),
                                          config, self._scales(weights))


@hookimpl
def jackfield_register_moe_dispatchers(register):
    register(TritonMoE)
