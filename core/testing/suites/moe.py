"""The MoE dispatcher suite: a dispatcher's `forward` against a float32 reference written here (every
expert applied densely, weighted by the SDK's reference routing), over expert counts 8–128, top-k
1–8, batch sizes from 1 token up, grouped and biased routing, experts that no token chooses (their
weights are NaN, so reading them shows), an empty batch, and on CUDA a replay under a CUDA graph.

The candidate gets its own copy of the weights, passed through its `prepare_weights` first (it may
re-lay them in place). Tolerances: relative Frobenius error 1e-4 in float32, 2e-2 in half types.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.sdk.moe import ExpertWeights, MoEConfig, RoutingConfig, route
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.suites.common import runs_on_device

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
V3_ROUTING = dict(scoring="sigmoid", num_groups=4, topk_groups=2, group_scoring="top2_sum", correction_bias=True,
                  scaling_factor=2.5)


@dataclass(frozen=True)
class Case:
    experts: int
    top_k: int
    tokens: int
    hidden: int = 64
    inter: int = 32
    routing: tuple = ()  # extra RoutingConfig fields

    def config(self) -> MoEConfig:
        return MoEConfig(self.experts, self.hidden, self.inter, RoutingConfig(top_k=self.top_k, **dict(self.routing)))

    def label(self) -> str:
        return f"E={self.experts} top-{self.top_k} T={self.tokens} H={self.hidden} I={self.inter}"


CASES = [
    Case(8, 1, 5), Case(8, 2, 1), Case(16, 4, 33, 32, 48), Case(64, 6, 16, 32, 16), Case(128, 8, 64),
    Case(128, 8, 1, 128, 64), Case(32, 8, 256, 64, 32),
    Case(16, 4, 24, routing=tuple(V3_ROUTING.items())),
    Case(8, 2, 12, routing=(("num_groups", 4), ("topk_groups", 2), ("renormalize", False))),
]


def _dtype(target: KitTarget) -> torch.dtype:
    if target.device == "cpu":
        return torch.float32
    declared = target.cls.capabilities.dtypes
    return torch.bfloat16 if "bfloat16" in declared else getattr(torch, declared[0])


def _problem(case: Case, device: str, dtype: torch.dtype, seed: int, idle: int = 0):
    """Inputs of one case; with `idle`, the last `idle` experts are never chosen and hold NaN."""
    gen = torch.Generator().manual_seed(seed)
    e, h, i, t = case.experts, case.hidden, case.inter, case.tokens
    w13 = torch.randn(e, 2 * i, h, generator=gen) / h ** 0.5
    w2 = torch.randn(e, h, i, generator=gen) / i ** 0.5
    x = torch.randn(t, h, generator=gen)
    logits = torch.randn(t, e, generator=gen)
    bias = 0.1 * torch.randn(e, generator=gen) if case.config().routing.correction_bias else None
    if idle:
        logits[:, e - idle:] = -1e4
        w13[e - idle:], w2[e - idle:] = float("nan"), float("nan")
    to = dict(device=device)
    return (x.to(dtype=dtype, **to), logits.to(**to), w13.to(dtype=dtype, **to), w2.to(dtype=dtype, **to),
            None if bias is None else bias.to(**to))


def reference(x, logits, w13, w2, routing: RoutingConfig, bias) -> torch.Tensor:
    """Dense float32 reference: every expert on every token, weighted by the routing (0 if unchosen)."""
    weights, ids = route(logits, routing, bias)
    dense = torch.zeros(x.shape[0], w13.shape[0], device=x.device).scatter_add_(1, ids.long(), weights)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w13.shape[0]):
        rows = dense[:, e] != 0
        if rows.any():
            gate, up = (x[rows].float() @ w13[e].float().T).chunk(2, dim=-1)
            out[rows] += dense[rows, e, None] * ((torch.nn.functional.silu(gate) * up) @ w2[e].float().T)
    return out


def _run(target: KitTarget, case: Case, x, logits, w13, w2, bias) -> torch.Tensor:
    dispatcher = target.cls(case.config())
    weights = dispatcher.prepare_weights(ExpertWeights(w13.clone(), w2.clone()))
    return dispatcher.forward(x, logits, weights, bias)


def _compare(target: KitTarget, case: Case, idle: int = 0) -> None:
    dtype = _dtype(target)
    x, logits, w13, w2, bias = _problem(case, target.device, dtype, seed=case.experts + case.tokens, idle=idle)
    out = _run(target, case, x, logits, w13, w2, bias)
    expect(out.shape == x.shape and out.dtype == x.dtype,
           f"{case.label()}: output {tuple(out.shape)} {out.dtype}, expected {tuple(x.shape)} {x.dtype}")
    expect(bool(torch.isfinite(out).all()), f"{case.label()}: non-finite output"
           + (f" (the {idle} experts no token chose hold NaN weights: were they read?)" if idle else ""))
    ref = reference(x, logits, w13.nan_to_num(0.0), w2.nan_to_num(0.0), case.config().routing, bias)
    err = float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    expect(err < TOLERANCE[dtype], f"{case.label()} {str(dtype).removeprefix('torch.')}: relative error {err:.2e} "
                                   f"vs the float32 reference (tolerance {TOLERANCE[dtype]:.0e})")


def _all_cases(target: KitTarget) -> None:
    for case in CASES:
        if case.routing:
            continue
        _compare(target, case)


def _grouped(target: KitTarget) -> None:
    for case in CASES:
        if case.routing:
            _compare(target, case)


def _idle_experts(target: KitTarget) -> None:
    _compare(target, Case(16, 2, 9), idle=12)
    _compare(target, Case(64, 4, 40, 32, 16), idle=48)


def _empty(target: KitTarget) -> None:
    case = Case(8, 2, 0)
    x, logits, w13, w2, bias = _problem(case, target.device, _dtype(target), seed=1)
    out = _run(target, case, x, logits, w13, w2, bias)
    expect(tuple(out.shape) == (0, case.hidden), f"an empty batch gave shape {tuple(out.shape)}")


def _select(target: KitTarget) -> None:
    for case in (Case(128, 8, 17), Case(16, 4, 24, routing=tuple(V3_ROUTING.items()))):
        _, logits, _, _, bias = _problem(case, target.device, _dtype(target), seed=3)
        weights, ids = target.cls(case.config()).select_experts(logits, bias)
        ref_w, ref_ids = route(logits, case.config().routing, bias)
        got = [dict(zip(i, w)) for i, w in zip(ids.tolist(), weights.tolist())]
        want = [dict(zip(i, w)) for i, w in zip(ref_ids.tolist(), ref_w.tolist())]
        for t, (g, r) in enumerate(zip(got, want)):
            expect(set(g) == set(r), f"{case.label()}: token {t} routed to {sorted(g)}, reference {sorted(r)}")
            worst = max(abs(g[k] - r[k]) for k in r)
            expect(worst < 1e-5, f"{case.label()}: token {t} routing weights differ by {worst:.1e}")


def _cuda_graph(target: KitTarget) -> None:
    case = Case(64, 8, 4, 128, 64)
    dtype = _dtype(target)
    x, logits, w13, w2, bias = _problem(case, "cuda", dtype, seed=5)
    dispatcher = target.cls(case.config())
    weights = dispatcher.prepare_weights(ExpertWeights(w13.clone(), w2.clone()))
    static_x, static_logits = x.clone(), logits.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dispatcher.forward(static_x, static_logits, weights, bias)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = dispatcher.forward(static_x, static_logits, weights, bias)
    x2, logits2, _, _, _ = _problem(case, "cuda", dtype, seed=6)
    static_x.copy_(x2)
    static_logits.copy_(logits2)
    graph.replay()
    ref = reference(x2, logits2, w13, w2, case.config().routing, bias)
    err = float((static_out.float() - ref).norm() / ref.norm())
    expect(err < TOLERANCE[dtype], f"replayed under a CUDA graph with new inputs: relative error {err:.2e}")


def _needs_cuda(target: KitTarget) -> str | None:
    why = runs_on_device(target)
    if why:
        return why
    if not target.cls.supports_cuda_graph:
        return "declares no CUDA-graph support"
    return None if target.device == "cuda" else "CUDA-graph capture is checked on cuda only"


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("forward matches the float32 reference over E 8–128, top-k 1–8, 1–256 tokens", _all_cases,
              runs_on_device),
        Check("grouped top-k routing (DeepSeek-V2 max, DeepSeek-V3 sigmoid + correction bias + top-2 sum)",
              _grouped, runs_on_device),
        Check("experts no token chooses are never read (their weights are NaN)", _idle_experts, runs_on_device),
        Check("an empty batch gives an empty result", _empty, runs_on_device),
        Check("select_experts picks the reference's experts and weights", _select, runs_on_device),
        Check("forward under CUDA-graph capture, replayed with new inputs", _cuda_graph, _needs_cuda),
    ]
