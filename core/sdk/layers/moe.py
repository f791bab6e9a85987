"""The sparse MoE block: a router, the routed experts run by the engine's MoE dispatcher, and
optional shared experts (always on, optionally behind a sigmoid gate as in Qwen2-MoE).

Checkpoint names follow Hugging Face: `<prefix>.gate.weight` (router [E, H]),
`<prefix>.gate.e_score_correction_bias` (DeepSeek-V3), `<prefix>.experts.<e>.<proj>.weight` (loaded
into the stacked `experts.w13_weight` / `experts.w2_weight`, see CausalLM.expert_params),
`<prefix>.<shared_name>.{gate,up,down}_proj.weight` and `<prefix>.shared_expert_gate.weight`.

At batch 1 on CUDA, the residual add and RMSNorm before the block and the router run as one kernel
(jackfield.kernels.router).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jackfield.kernels import fused_available
from jackfield.sdk.layers.expert_parallel import expert_parallel
from jackfield.sdk.layers.mlp import GatedMLP
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.model_config import ModelConfig
from jackfield.sdk.moe import ExpertWeights, MoEConfig, MoEDispatcher, RoutingConfig


def expert_config(config: ModelConfig, routing: RoutingConfig) -> MoEConfig:
    """The MoEConfig of a model's expert layers (config.moe) under the architecture's routing."""
    return MoEConfig(config.moe.num_experts, config.hidden_size, config.moe.intermediate_size, routing,
                     config.hidden_act)


class PlainLinear(nn.Module):
    """y = x W^T with W [out, in] never quantized, kept in `dtype` (the compute dtype by default)."""

    def __init__(self, in_features: int, out_features: int, ctx: ModelBuildContext, dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype or ctx.dtype,
                                               device=ctx.device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight)


class FusedExperts(nn.Module):
    """A layer's routed experts stacked as the quantization method's ExpertMethod creates them
    (w13_weight [E, 2I, H], w2_weight [E, H, I] when plain); `weight_loader` takes one expert's
    tensor at a time, with shard (expert id, 0 gate | 1 up | 2 down)."""

    def __init__(self, config: MoEConfig, ctx: ModelBuildContext, prefix: str, dispatcher: MoEDispatcher):
        super().__init__()
        self.prefix, self.dispatcher = prefix, dispatcher
        self.method = ctx.quant.expert_method(prefix)
        if self.method.format not in dispatcher.weight_formats:
            raise ValueError(f"{prefix}: the MoE dispatcher '{dispatcher.name}' cannot run experts stored as "
                             f"'{self.method.format}' (it runs {', '.join(dispatcher.weight_formats)})")
        self.first, self.count = getattr(dispatcher, "first", 0), getattr(dispatcher, "local", config.num_experts)
        self.method.create_weights(self, self.count, config.hidden_size, config.intermediate_size,
                                   ctx.dtype, ctx.device)
        self.prepared: ExpertWeights | None = None
        if self.count != config.num_experts:  # random weights: every rank draws all experts and keeps its own
            self.dummy_shapes = {name: (config.num_experts, *p.shape[1:]) for name, p in self.named_parameters()
                                 if p.shape[:1] == (self.count,)}

    def dummy_part(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return full[self.first:self.first + self.count]

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard) -> None:
        """Under expert parallelism (the dispatcher's `first`, `local`) this rank keeps its experts only."""
        expert, which = shard
        if expert is None and self.count != tensor.shape[0]:  # every expert in one tensor
            tensor = tensor[self.first:self.first + self.count]
        elif expert is not None:
            if not self.first <= expert < self.first + self.count:
                return
            expert -= self.first
        self.method.load(self, param_name, tensor, expert, which)

    def process_weights_after_loading(self) -> None:
        self.method.process_weights_after_loading(self)
        self.prepared = self.dispatcher.prepare_weights(self.method.weights(self))


class SparseMoE(nn.Module):
    def __init__(self, config: MoEConfig, ctx: ModelBuildContext, prefix: str, shared_intermediate_size: int = 0,
                 shared_name: str = "shared_experts", shared_gate: bool = False, router_dtype: torch.dtype | None = None):
        """`router_dtype`: the router's weight and logits dtype (default the compute dtype; DeepSeek
        keeps its router in float32, as its checkpoints and transformers do)."""
        super().__init__()
        if ctx.moe is None:
            raise ValueError(f"{prefix} is an expert layer, but no MoE dispatcher was selected (moe_backend)")
        self.dispatcher: MoEDispatcher = expert_parallel(ctx.moe, config, ctx.ep)
        self.gate = PlainLinear(config.hidden_size, config.num_experts, ctx, dtype=router_dtype)
        if config.routing.correction_bias:
            self.gate.e_score_correction_bias = nn.Parameter(
                torch.zeros(config.num_experts, dtype=torch.float32, device=ctx.device), requires_grad=False)
        self.experts = FusedExperts(config, ctx, f"{prefix}.experts", self.dispatcher)
        self.shared_name = shared_name if shared_intermediate_size else None
        if self.shared_name:
            self.add_module(shared_name, GatedMLP(config.hidden_size, shared_intermediate_size, ctx,
                                                  f"{prefix}.{shared_name}"))
        self.shared_expert_gate = PlainLinear(config.hidden_size, 1, ctx) if shared_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._routed(x, self.gate(x))

    def _routed(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        if self.experts.prepared is None:
            raise RuntimeError(f"{self.experts.prefix}: weights were not loaded")
        bias = getattr(self.gate, "e_score_correction_bias", None)
        out = self.dispatcher.forward(x, router_logits, self.experts.prepared, bias)
        if self.shared_name:
            shared = getattr(self, self.shared_name)(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module):
        """The block on norm(x + residual); returns (output, x + residual)."""
        if residual is None:
            return self.forward(norm(x)), x
        if _one_row(x, residual, self.gate.weight):  # add + norm + router in one kernel
            from jackfield.kernels.router import rmsnorm_router

            h, residual, logits = rmsnorm_router(x, residual, norm.weight, norm.eps, self.gate.weight)
            return self._routed(h, logits), residual
        h, residual = norm(x, residual)
        return self.forward(h), residual


def _one_row(x: torch.Tensor, residual: torch.Tensor, router_weight: torch.Tensor) -> bool:
    """A batch-1 step on CUDA with Triton, where the fused add + RMSNorm + router kernel applies."""
    return (x.dim() == 2 and x.shape[0] == 1 and fused_available(x) and x.is_contiguous()
            and residual.is_contiguous() and router_weight.is_contiguous())
