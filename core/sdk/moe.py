"""Mixture-of-experts dispatchers: route each token to its top-k experts and combine their outputs.

An MoE layer (`jackfield.sdk.layers.moe.SparseMoE`) owns the router and the expert weights and makes
one call per forward, `dispatcher.forward(hidden, router_logits, weights, correction_bias)`. The
base class splits that call into the two steps a dispatcher may replace:

  select_experts(router_logits, correction_bias) -> (topk_weights [T, k] float32, topk_ids [T, k] int32)
  experts(hidden, topk_weights, topk_ids, weights) -> [T, H]

`select_experts` defaults to `route`, the torch reference of every routing option (softmax or
sigmoid scores, renormalization, grouped top-k with DeepSeek-V3's correction bias, the routed
scaling factor), so a dispatcher that brings only grouped GEMMs implements `experts` alone; one
that fuses top-k into its kernels overrides `forward` and reads the options from
`config.routing`. The routing options are data (`RoutingConfig`) because a fused kernel needs them
as constants, and the layer never computes top-k itself for the same reason.

Expert weights arrive as an `ExpertWeights`: w13 [E, 2I, H] (each expert's gate rows, then its up
rows) and w2 [E, H, I]. Its `format` names how they are stored: "unquantized" by default; a
quantization method whose `expert_method` stores experts otherwise names its format and passes its
scales, and a dispatcher lists the formats it runs in `weight_formats`. "fp8_block" (DeepSeek-V3's
experts): float8_e4m3fn codes with one float32 scale per [bn, bk] = `block` tile of each expert's
matrix (w13_scale [E, cdiv(2I, bn), cdiv(H, bk)], w2_scale [E, cdiv(H, bn), cdiv(I, bk)], I a
multiple of bn so that no block holds both gate and up rows); `ExpertWeights.dequantized(e)` is the
float32 reference every dispatcher's numerics are held to (weight-only: activations unquantized).
`prepare_weights` is called once after loading, so a dispatcher may re-lay its weights in place
(FlashInfer's kernels want [up; gate]).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class RoutingConfig:
    """How router logits [T, E] become each token's top-k experts and their weights."""

    top_k: int
    scoring: str = "softmax"       # "softmax" | "sigmoid": probabilities from the logits
    renormalize: bool = True       # divide the k chosen probabilities by their sum
    num_groups: int = 1            # grouped top-k: experts split in groups, the best `topk_groups` kept
    topk_groups: int = 1
    group_scoring: str = "max"     # "max" (DeepSeek-V2) | "top2_sum" (DeepSeek-V3) of a group's scores
    correction_bias: bool = False  # DeepSeek-V3: a per-expert bias added for the choice, not the weights
    scaling_factor: float = 1.0    # multiplies the final weights (routed_scaling_factor)

    def __post_init__(self):
        if self.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown MoE scoring function '{self.scoring}' (supported: softmax, sigmoid)")
        if self.group_scoring not in ("max", "top2_sum"):
            raise ValueError(f"unknown MoE group scoring '{self.group_scoring}' (supported: max, top2_sum)")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    hidden_size: int
    intermediate_size: int  # per expert
    routing: RoutingConfig
    activation: str = "silu"

    @property
    def top_k(self) -> int:
        return self.routing.top_k


@dataclass(frozen=True)
class ExpertWeights:
    """One layer's routed experts as the dispatcher consumes them."""

    w13: torch.Tensor  # [E, 2I, H]: rows [0, I) gate, [I, 2I) up
    w2: torch.Tensor   # [E, H, I]
    format: str = "unquantized"
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    block: tuple[int, int] | None = None  # [bn, bk] of the block scales ("fp8_block")

    def dequantized(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert `expert`'s (w13 [2I, H], w2 [H, I]) in float32, the scales applied."""
        w13, w2 = self.w13[expert].float(), self.w2[expert].float()
        if self.format == "unquantized":
            return w13, w2
        if self.format != "fp8_block":
            raise ValueError(f"no reference dequantization of experts stored as '{self.format}'")
        return _apply_blocks(w13, self.w13_scale[expert], self.block), _apply_blocks(w2, self.w2_scale[expert], self.block)


def _apply_blocks(w: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    bn, bk = block
    full = scale.float().repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return w * full[:w.shape[0], :w.shape[1]]


def route(router_logits: torch.Tensor, routing: RoutingConfig,
          correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference top-k: (weights [T, k] float32, ids [T, k] int32), in no particular order."""
    scores = _scores(router_logits, routing)
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if routing.num_groups > 1:
        t, e = choice.shape
        grouped = choice.view(t, routing.num_groups, e // routing.num_groups)
        if routing.group_scoring == "max":
            group_scores = grouped.max(-1).values
        else:
            group_scores = grouped.topk(2, -1).values.sum(-1)
        keep = group_scores.topk(routing.topk_groups, -1).indices
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~mask.repeat_interleave(e // routing.num_groups, dim=1), float("-inf"))
    ids = choice.topk(routing.top_k, -1).indices
    return _chosen_weights(scores, ids, routing), ids.to(torch.int32)


def route_weights(router_logits: torch.Tensor, ids: torch.Tensor, routing: RoutingConfig) -> torch.Tensor:
    """The weights [T, k] float32 that `route` gives experts `ids` [T, k] already chosen (a replay of
    another run's choice: the conformance kit compares dtypes under the same routing decisions)."""
    return _chosen_weights(_scores(router_logits, routing), ids.long(), routing)


def _scores(router_logits: torch.Tensor, routing: RoutingConfig) -> torch.Tensor:
    logits = router_logits.float()
    return logits.softmax(-1) if routing.scoring == "softmax" else logits.sigmoid()


def _chosen_weights(scores: torch.Tensor, ids: torch.Tensor, routing: RoutingConfig) -> torch.Tensor:
    weights = scores.gather(1, ids)
    if routing.renormalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    if routing.scaling_factor != 1.0:
        weights = weights * routing.scaling_factor
    return weights


class MoEDispatcher(Component):
    kind: ClassVar[str] = "moe"
    weight_formats: ClassVar[tuple[str, ...]] = ("unquantized",)
    """`ExpertWeights.format` values this dispatcher runs."""
    supports_cuda_graph: ClassVar[bool] = True
    """Can `forward` be captured in a CUDA graph (no host reads of device values, buffer sizes a
    function of the batch shape)? The model runner captures no decode graphs otherwise."""

    def __init__(self, config: MoEConfig):
        if config.activation != "silu":
            raise ValueError(f"MoE dispatcher '{self.name}' supports the silu activation, not '{config.activation}'")
        self.config = config

    def prepare_weights(self, weights: ExpertWeights) -> ExpertWeights:
        """Called once per layer after loading; may re-lay the tensors in place. Returns what
        `forward` will be given."""
        if weights.format not in self.weight_formats:
            raise ValueError(f"MoE dispatcher '{self.name}' cannot run experts stored as '{weights.format}' "
                             f"(runs {', '.join(self.weight_formats)})")
        return weights

    def select_experts(self, router_logits: torch.Tensor,
                       correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of router_logits [T, E]: (weights [T, k] float32, ids [T, k] int32)."""
        return route(router_logits, self.config.routing, correction_bias)

    @abstractmethod
    def experts(self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                weights: ExpertWeights) -> torch.Tensor:
        """sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t]) for hidden [T, H] -> [T, H]
        in hidden's dtype, where expert_e(x) = w2[e] (silu(gate_e x) * up_e x)."""

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor, weights: ExpertWeights,
                correction_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The MoE output [T, H] for hidden [T, H] and router_logits [T, E]."""
        topk_weights, topk_ids = self.select_experts(router_logits, correction_bias)
        return self.experts(hidden, topk_weights, topk_ids, weights)


class ExpertMethod:
    """How a layer's routed experts are created, loaded and handed to the dispatcher; the
    quantization method's `expert_method(prefix)` returns one (plain weights by default)."""

    format: ClassVar[str] = "unquantized"

    def create_weights(self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int,
                       dtype: torch.dtype, device: torch.device | str) -> None:
        layer.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size, dtype=dtype,
                                                    device=device), requires_grad=False)
        layer.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size, dtype=dtype,
                                                   device=device), requires_grad=False)

    def load(self, layer: nn.Module, param_name: str, tensor: torch.Tensor, expert: int | None,
             shard: int | None) -> None:
        """Copy one expert's checkpoint tensor into `param_name`: shard 0 gate, 1 up (the two halves
        of w13), 2 down (w2). Expert None: the tensor holds every expert, stacked as the parameter."""
        param = getattr(layer, param_name)
        if expert is None:
            target = param
        elif not 0 <= expert < param.shape[0]:
            raise ValueError(f"expert {expert} out of range (the layer has {param.shape[0]})")
        else:
            target = param[expert]
        if expert is not None and shard in (0, 1):
            half = target.shape[0] // 2
            target = target[shard * half:(shard + 1) * half]
        if tensor.shape != target.shape:
            which = "stacked experts" if expert is None else f"expert {expert}"
            raise ValueError(f"{which} weight shape {tuple(tensor.shape)} does not fit {param_name} "
                             f"(expects {tuple(target.shape)})")
        with torch.no_grad():
            target.copy_(tensor)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack or convert once every expert is loaded."""

    def weights(self, layer: nn.Module) -> ExpertWeights:
        return ExpertWeights(layer.w13_weight, layer.w2_weight, self.format)
