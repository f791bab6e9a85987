"""Routing replay: a model's float32 run takes the expert choices of its low-precision run.

Top-k routing is a discrete decision. On a tiny random model some token's k-th and (k+1)-th expert
scores can lie closer than bfloat16 rounding moves them (3e-4 apart against logit errors of 2e-2
in DeepSeek-V3's tiny config), and which expert wins then depends on the device's rounding. A flip
changes that position's output by far more than any precision error, so "logits in dtype X are
close to float32" is only a statement about precision when both runs route alike.

`record_routing(model)` wraps every MoE dispatcher of a model: each call runs the dispatcher
unchanged and also stores its own choice (`select_experts`) on the same router logits.
`replay_routing(model, recorded)` makes the other model's dispatchers compute the experts the
recorded run chose, weighted from their own logits (`jackfield.sdk.moe.route_weights`), in the
same order of calls. A model without MoE layers has no dispatchers and runs unchanged.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from jackfield.sdk.moe import MoEDispatcher, route_weights


def _dispatchers(model: torch.nn.Module) -> dict[str, MoEDispatcher]:
    return {name: m.dispatcher for name, m in model.named_modules()
            if isinstance(getattr(m, "dispatcher", None), MoEDispatcher)}


def record_routing(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """Wrap the model's dispatchers; the returned dict fills with each layer's chosen ids [T, k] per call."""
    recorded: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, d in _dispatchers(model).items():
        def forward(hidden, router_logits, weights, correction_bias=None, d=d, name=name, run=d.forward):
            recorded[name].append(d.select_experts(router_logits, correction_bias)[1])
            return run(hidden, router_logits, weights, correction_bias)
        d.forward = forward
    return recorded


def replay_routing(model: torch.nn.Module, recorded: dict[str, list[torch.Tensor]]) -> None:
    """Wrap the model's dispatchers to route as `recorded` did (same layer names, same calls in order)."""
    calls = {name: list(ids) for name, ids in recorded.items()}
    for name, d in _dispatchers(model).items():
        def forward(hidden, router_logits, weights, correction_bias=None, d=d, name=name):
            if not calls.get(name):
                raise RuntimeError(f"{name}: no recorded routing left to replay")
            ids = calls[name].pop(0).to(router_logits.device)
            if ids.shape[0] != router_logits.shape[0]:
                raise RuntimeError(f"{name}: recorded routing of {ids.shape[0]} tokens, "
                                   f"replayed on {router_logits.shape[0]}")
            return d.experts(hidden, route_weights(router_logits, ids, d.config.routing), ids.to(torch.int32), weights)
        d.forward = forward

