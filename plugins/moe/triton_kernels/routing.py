"""Top-k routing in one kernel: scores (softmax or sigmoid), the correction bias, grouped top-k,
the k best experts, renormalization and the routed scaling factor, one program per token.

Matches jackfield.sdk.route. Grouped top-k needs the expert count and the group count to be powers
of two (the kernel views the row as [groups, experts per group]); the dispatcher takes the torch
reference otherwise.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import RoutingConfig, pdl_kwargs


@triton.jit
def topk_row(Logits, Bias, row, num_experts, scaling, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr,
             SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr, GROUPS: tl.constexpr,
             TOPK_GROUPS: tl.constexpr, TOP2_SUM: tl.constexpr):
    """(ids [TOP_K] int32, weights [TOP_K] float32) of one token's logits row (pointer `Logits + row`)."""
    offs = tl.arange(0, BLOCK_E)
    valid = offs < num_experts
    logits = tl.load(Logits + row + offs, mask=valid, other=float("-inf")).to(tl.float32)
    if SIGMOID:
        scores = tl.where(valid, 1.0 / (1.0 + tl.exp(-logits)), 0.0)
    else:
        e = tl.exp(logits - tl.max(logits, 0))
        scores = e / tl.sum(e, 0)
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(Bias + offs, mask=valid, other=0.0).to(tl.float32)
    choice = tl.where(valid, choice, float("-inf"))
    if GROUPS > 1:
        grouped = tl.reshape(choice, (GROUPS, BLOCK_E // GROUPS))
        best = tl.max(grouped, 1)
        if TOP2_SUM:
            col = tl.arange(0, BLOCK_E // GROUPS)
            first = tl.argmax(grouped, 1)
            second = tl.max(tl.where(col[None, :] == first[:, None], float("-inf"), grouped), 1)
            best = best + second
        g_offs = tl.arange(0, GROUPS)
        kept = tl.zeros((GROUPS,), tl.int1)
        for _ in tl.static_range(TOPK_GROUPS):
            pick = tl.argmax(best, 0)
            kept = kept | (g_offs == pick)
            best = tl.where(g_offs == pick, float("-inf"), best)
        keep = tl.reshape(tl.broadcast_to(kept[:, None], (GROUPS, BLOCK_E // GROUPS)), (BLOCK_E,))
        choice = tl.where(keep, choice, float("-inf"))
    k_offs = tl.arange(0, TOP_K)
    ids = tl.zeros((TOP_K,), tl.int32)
    weights = tl.zeros((TOP_K,), tl.float32)
    for j in tl.static_range(TOP_K):
        pick = tl.argmax(choice, 0)
        ids = tl.where(k_offs == j, pick, ids)
        weights = tl.where(k_offs == j, tl.sum(tl.where(offs == pick, scores, 0.0), 0), weights)
        choice = tl.where(offs == pick, float("-inf"), choice)
    if RENORM:
        weights = weights / (tl.sum(weights, 0) + 1e-20)
    return ids, weights * scaling


@triton.jit
def _routing_kernel(Logits, Bias, Weights, Ids, stride_l, num_experts, scaling,
                    TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
                    RENORM: tl.constexpr, GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr,
                    TOP2_SUM: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    t = tl.program_id(0)
    ids, weights = topk_row(Logits, Bias, t * stride_l, num_experts, scaling, TOP_K, BLOCK_E, SIGMOID, HAS_BIAS,
                            RENORM, GROUPS, TOPK_GROUPS, TOP2_SUM)
    k_offs = tl.arange(0, TOP_K)
    tl.store(Ids + t * TOP_K + k_offs, ids)
    tl.store(Weights + t * TOP_K + k_offs, weights)


def routing_constants(routing: RoutingConfig, num_experts: int) -> dict:
    """The constexpr arguments of `topk_row` for one routing config."""
    return dict(TOP_K=routing.top_k, BLOCK_E=triton.next_power_of_2(num_experts), SIGMOID=routing.scoring == "sigmoid",
                RENORM=routing.renormalize, GROUPS=max(1, routing.num_groups), TOPK_GROUPS=routing.topk_groups,
                TOP2_SUM=routing.group_scoring == "top2_sum")


def fused_routing_supported(routing: RoutingConfig, num_experts: int) -> bool:
    """The kernel's limits: top_k a power of two; grouped top-k on power-of-two counts."""
    pow2 = lambda n: n & (n - 1) == 0  # noqa: E731
    if not pow2(routing.top_k):
        return False
    return routing.num_groups <= 1 or (pow2(num_experts) and pow2(routing.num_groups))


def fused_routing(router_logits: torch.Tensor, routing: RoutingConfig,
                  correction_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, k] float32, topk_ids [T, k] int32) for router_logits [T, E]."""
    t, e = router_logits.shape
    weights = torch.empty(t, routing.top_k, dtype=torch.float32, device=router_logits.device)
    ids = torch.empty(t, routing.top_k, dtype=torch.int32, device=router_logits.device)
    if t == 0:
        return weights, ids
    _routing_kernel[(t,)](
        router_logits, correction_bias if correction_bias is not None else router_logits, weights, ids,
        router_logits.stride(0), e, routing.scaling_factor, HAS_BIAS=correction_bias is not None,
        **routing_constants(routing, e), num_warps=1 if e <= 64 else 4, **pdl_kwargs(router_logits))
    return weights, ids
