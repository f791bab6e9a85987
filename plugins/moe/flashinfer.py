"""The `flashinfer` MoE dispatcher: FlashInfer's CUTLASS fused MoE (`flashinfer.fused_moe.
cutlass_fused_moe`, flashinfer-python 0.7) on Hopper (sm90), bf16/fp16 experts.

Routing is the SDK's (the `triton` dispatcher's fused kernel where it applies); FlashInfer takes the
chosen expert ids and weights and runs permutation, both grouped GEMMs with the SwiGLU between them
and the weighted reduction. Its GEMM 1 wants each expert's up rows before its gate rows, so
`prepare_weights` swaps the two halves of w13 in place, one expert at a time. FlashInfer compiles
the CUTLASS module (JIT, nvcc) the first time a process uses it; that takes minutes on a fresh machine.
"""
from __future__ import annotations

import importlib.util

import torch

from jackfield.sdk import Availability, Capabilities, ExpertWeights, MoEDispatcher, hookimpl, require_cuda


class FlashInferMoE(MoEDispatcher):
    name = "flashinfer"
    priority = 40  # below triton: auto picks the Triton kernels, this one is opt-in
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16"), features=frozenset({"silu"}),
                                min_compute_capability=(9, 0))
    description = "FlashInfer CUTLASS fused MoE (sm90, bf16/fp16)"
    requires_packages = ("flashinfer",)

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("flashinfer") is None:
            return Availability.no("Python package 'flashinfer' is not installed (pip install flashinfer-python)")
        found = require_cuda((9, 0))
        if not found.ok:
            return found
        if torch.cuda.get_device_capability() != (9, 0):
            major, minor = torch.cuda.get_device_capability()
            return Availability.no(f"this dispatcher is built for sm90 (Hopper); the device is sm{major}{minor}")
        return found

    def __init__(self, config):
        super().__init__(config)
        from flashinfer.fused_moe import cutlass_fused_moe

        self.run = cutlass_fused_moe
        self.select = None

    def prepare_weights(self, weights: ExpertWeights) -> ExpertWeights:
        weights = super().prepare_weights(weights)
        if weights.w13.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the flashinfer MoE dispatcher runs bf16/fp16 experts, not {weights.w13.dtype}")
        inter = weights.w13.shape[1] // 2
        with torch.no_grad():
            for expert in weights.w13:  # [gate; up] -> [up; gate]
                gate = expert[:inter].clone()
                expert[:inter] = expert[inter:]
                expert[inter:] = gate
        return weights

    def select_experts(self, router_logits, correction_bias=None):
        if self.select is None:
            from jackfield_plugins.moe import triton_kernels

            fused = triton_kernels.fused_routing_supported(self.config.routing, self.config.num_experts)
            self.select = (lambda logits, bias: triton_kernels.fused_routing(logits, self.config.routing, bias)) \
                if fused else (lambda logits, bias: MoEDispatcher.select_experts(self, logits, bias))
        return self.select(router_logits, correction_bias)

    def experts(self, hidden, topk_weights, topk_ids, weights):
        out = torch.empty_like(hidden)
        if hidden.shape[0] == 0:
            return out
        self.run(input=hidden, token_selected_experts=topk_ids.to(torch.int32),
                 token_final_scales=topk_weights.to(torch.float32), fc1_expert_weights=weights.w13,
                 fc2_expert_weights=weights.w2, output_dtype=hidden.dtype, quant_scales=[], output=out)
        return out


@hookimpl
def jackfield_register_moe_dispatchers(register):
    register(FlashInferMoE)
