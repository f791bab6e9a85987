"""The expert computation of a fused MoE: y[t] = sum_j w[t, j] * W2[e] (silu(G[e] x) * U[e] x),
e = ids[t, j], in two launches, each one grouped over all experts.

Two forms, chosen per batch size by the tuned config (configs.py):
* "gemm" (grouped GEMM; prefill, large decode batches): pairs sorted and aligned by expert
  (align.py); GEMM 1 runs one program per (M-block of one expert's pairs, N-block of I), loads the
  gate and the up tile of W13 for the same columns and writes silu(gate) * up; GEMM 2 multiplies by
  W2, scales each row by its routing weight and writes one row per pair; the k rows of a token are
  summed last. Each expert's weights are read once per M-block.
* "gemv" (small batches, where the pairs seldom share an expert): no sorting; GEMV 1 runs one
  program per (pair, N-block) and GEMV 2 one per (token, N-block of H), looping over the token's k
  experts and summing in registers, so it writes the output directly; or, with "SPLIT2", one
  per (pair, N-block of H), each writing its weighted row, and the k rows of a token summed after
  (the default: more programs, each with a k times shorter chain of loads), with "ATOMIC2" added
  atomically into the output that GEMV 1 zeroes (no summing launch). `fused_moe_gemv` also fuses
  the top-k routing into GEMV 1, so a batch-1 decode's whole MoE is two launches (three with
  SPLIT2 and no ATOMIC2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import RoutingConfig, pdl_kwargs
from jackfield_plugins.moe.triton_kernels.align import moe_align_block_size
from jackfield_plugins.moe.triton_kernels.routing import routing_constants, topk_row


@triton.jit
def _silu_mul(gate, up):
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def _tile(NumPadded, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(M-block, N-block, rows in its group) of this program over the used M-blocks, GROUP_M M-blocks
    at a time for L2 reuse of the activations; rows <= 0 marks a program past the used blocks."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(n_cols, BLOCK_N)
    first_m = pid // (GROUP_M * num_n) * GROUP_M
    rows = tl.minimum(tl.cdiv(tl.load(NumPadded), BLOCK_M) - first_m, GROUP_M)
    in_group = pid % (GROUP_M * num_n)
    safe = tl.maximum(rows, 1)
    return first_m + in_group % safe, in_group // safe, rows


@triton.jit
def _gemm1_kernel(X, W13, Inter, SortedIds, ExpertIds, NumPadded, num_pairs, hidden, inter,
                  stride_x, stride_we, stride_wn, stride_i, S13, stride_se, stride_sn,
                  TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr, SBN: tl.constexpr,
                  SBK: tl.constexpr):
    pid_m, pid_n, rows = _tile(NumPadded, inter, BLOCK_M, BLOCK_N, GROUP_M)
    if rows <= 0:
        return
    expert = tl.load(ExpertIds + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SortedIds + offs_m)
    m_mask = pair < num_pairs
    token = (pair // TOP_K).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    x_ptr = X + token[:, None] * stride_x + offs_k[None, :]
    g_ptr = W13 + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    u_ptr = g_ptr + inter * stride_wn
    # FP8 blocks: a [BLOCK_K, BLOCK_N] tile lies in one scale block (BLOCK_N | SBN, BLOCK_K | SBK, I % SBN == 0)
    gs_ptr = S13 + expert * stride_se + (pid_n * BLOCK_N // SBN) * stride_sn
    us_ptr = gs_ptr + (inter // SBN) * stride_sn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_mask = offs_k < hidden - k0
        x = tl.load(x_ptr, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & n_mask[None, :]
        if FP8:
            g = tl.load(g_ptr, mask=w_mask, other=0.0).to(x.dtype)
            u = tl.load(u_ptr, mask=w_mask, other=0.0).to(x.dtype)
            acc_g += tl.dot(x, g, input_precision=PRECISION) * tl.load(gs_ptr + k0 // SBK)
            acc_u += tl.dot(x, u, input_precision=PRECISION) * tl.load(us_ptr + k0 // SBK)
        else:
            acc_g = tl.dot(x, tl.load(g_ptr, mask=w_mask, other=0.0), acc_g, input_precision=PRECISION)
            acc_u = tl.dot(x, tl.load(u_ptr, mask=w_mask, other=0.0), acc_u, input_precision=PRECISION)
        x_ptr += BLOCK_K
        g_ptr += BLOCK_K
        u_ptr += BLOCK_K
    h = _silu_mul(acc_g, acc_u)
    tl.store(Inter + pair.to(tl.int64)[:, None] * stride_i + offs_n[None, :], h.to(Inter.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gemm2_kernel(Inter, W2, Out, SortedIds, ExpertIds, NumPadded, TopkWeights, num_pairs, hidden, inter,
                  stride_i, stride_we, stride_wn, stride_o, S2, stride_se, stride_sn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  PRECISION: tl.constexpr, FP8: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr):
    pid_m, pid_n, rows = _tile(NumPadded, hidden, BLOCK_M, BLOCK_N, GROUP_M)
    if rows <= 0:
        return
    expert = tl.load(ExpertIds + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SortedIds + offs_m)
    m_mask = pair < num_pairs
    pair = pair.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)
    a_ptr = Inter + pair[:, None] * stride_i + offs_k[None, :]
    w_ptr = W2 + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    s_ptr = S2 + expert * stride_se + (pid_n * BLOCK_N // SBN) * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k_mask = offs_k < inter - k0
        a = tl.load(a_ptr, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if FP8:
            acc += tl.dot(a, w.to(a.dtype), input_precision=PRECISION) * tl.load(s_ptr + k0 // SBK)
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptr += BLOCK_K
        w_ptr += BLOCK_K
    acc = acc * tl.load(TopkWeights + pair, mask=m_mask, other=0.0)[:, None]
    tl.store(Out + pair[:, None] * stride_o + offs_n[None, :], acc.to(Out.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gemv1_kernel(X, W13, Inter, TopkIds, TopkWeights, Logits, Bias, hidden, inter, stride_x, stride_we, stride_wn,
                  stride_i, stride_l, num_experts, scaling, S13, stride_se, stride_sn,
                  Out, stride_o, ZERO: tl.constexpr, FP8: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr,
                  TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROUTE: tl.constexpr,
                  BLOCK_E: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
                  GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, TOP2_SUM: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    token = pair // TOP_K
    if ZERO > 0:  # GEMV 2 adds the pairs' rows atomically into Out: the token's first pair zeroes it, in slices
        if pair % TOP_K == 0:
            offs_z = pid_n * ZERO + tl.arange(0, ZERO)
            tl.store(Out + token * stride_o + offs_z, tl.zeros((ZERO,), Out.dtype.element_ty), mask=offs_z < hidden)
    if ROUTE:  # top-k of this token's router logits, recomputed by every program of the token (E values)
        ids, weights = topk_row(Logits, Bias, token * stride_l, num_experts, scaling, TOP_K, BLOCK_E, SIGMOID,
                                HAS_BIAS, RENORM, GROUPS, TOPK_GROUPS, TOP2_SUM)
        mine = tl.arange(0, TOP_K) == pair % TOP_K
        expert = tl.sum(tl.where(mine, ids, 0), 0)
        if pid_n == 0:  # one program per pair hands the routing to GEMV 2
            tl.store(TopkIds + pair, expert)
            tl.store(TopkWeights + pair, tl.sum(tl.where(mine, weights, 0.0), 0))
        expert = expert.to(tl.int64)
    else:
        expert = tl.load(TopkIds + pair).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    g_ptr = W13 + expert * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    u_ptr = g_ptr + inter * stride_wn
    # FP8 blocks: the tile's rows lie in one block row (BLOCK_N | SBN, I % SBN == 0); x takes the K scales
    gs_ptr = S13 + expert * stride_se + (pid_n * BLOCK_N // SBN) * stride_sn
    us_ptr = gs_ptr + (inter // SBN) * stride_sn
    acc_g = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_mask = offs_k < hidden - k0
        x = tl.load(X + token * stride_x + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        w_mask = n_mask[:, None] & k_mask[None, :]
        if FP8:
            xg = x * tl.load(gs_ptr + (k0 + offs_k) // SBK, mask=k_mask, other=0.0)
            xu = x * tl.load(us_ptr + (k0 + offs_k) // SBK, mask=k_mask, other=0.0)
        else:
            xg = x
            xu = x
        acc_g += tl.load(g_ptr, mask=w_mask, other=0.0).to(tl.float32) * xg[None, :]
        acc_u += tl.load(u_ptr, mask=w_mask, other=0.0).to(tl.float32) * xu[None, :]
        g_ptr += BLOCK_K
        u_ptr += BLOCK_K
    h = _silu_mul(tl.sum(acc_g, 1), tl.sum(acc_u, 1))
    tl.store(Inter + pair * stride_i + offs_n, h.to(Inter.dtype.element_ty), mask=n_mask)


@triton.jit
def _down_tile(Inter, W2, TopkIds, TopkWeights, pair, offs_n, n_mask, inter, stride_i, stride_we, stride_wn,
               S2, stride_se, stride_sn, FP8: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One pair's down projection for the columns offs_n, times its routing weight, before the final
    sum over the tile's K lanes: [BLOCK_N, BLOCK_K] float32."""
    offs_k = tl.arange(0, BLOCK_K)
    expert = tl.load(TopkIds + pair).to(tl.int64)
    w_ptr = W2 + expert * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    s_ptr = S2 + expert * stride_se + (tl.min(offs_n, 0) // SBN) * stride_sn  # one block row (BLOCK_N | SBN)
    part = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k_mask = offs_k < inter - k0
        a = tl.load(Inter + pair * stride_i + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        if FP8:
            a = a * tl.load(s_ptr + (k0 + offs_k) // SBK, mask=k_mask, other=0.0)
        part += tl.load(w_ptr, mask=n_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32) * a[None, :]
        w_ptr += BLOCK_K
    return part * tl.load(TopkWeights + pair)


@triton.jit
def _gemv2_kernel(Inter, W2, Out, TopkIds, TopkWeights, hidden, inter, stride_i, stride_we, stride_wn, stride_o,
                  S2, stride_se, stride_sn, FP8: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr,
                  ATOMIC: tl.constexpr, TOP_K: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """One program per (token, N-block of H) summing the token's k experts into Out [T, H]; or, SPLIT,
    one per (pair, N-block) writing the pair's weighted row to Out [T * k, H], summed after: k times
    the programs, each with a k times shorter chain of dependent loads (at batch 1 the unsplit form
    runs H / BLOCK_N programs, about one per SM, each streaming its k experts one after the other);
    SPLIT and ATOMIC: each pair's row added atomically into Out [T, H] (zeroed by GEMV 1), which
    saves the summing launch."""
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hidden
    if SPLIT:
        acc = _down_tile(Inter, W2, TopkIds, TopkWeights, row, offs_n, n_mask, inter, stride_i, stride_we,
                         stride_wn, S2, stride_se, stride_sn, FP8, SBN, SBK, BLOCK_N, BLOCK_K)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for j in tl.static_range(TOP_K):
            acc += _down_tile(Inter, W2, TopkIds, TopkWeights, row * TOP_K + j, offs_n, n_mask, inter, stride_i,
                              stride_we, stride_wn, S2, stride_se, stride_sn, FP8, SBN, SBK, BLOCK_N, BLOCK_K)
    y = tl.sum(acc, 1).to(Out.dtype.element_ty)
    if ATOMIC:
        tl.atomic_add(Out + (row // TOP_K) * stride_o + offs_n, y, mask=n_mask, sem="relaxed")
    else:
        tl.store(Out + row * stride_o + offs_n, y, mask=n_mask)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


NO_ROUTE = dict(BLOCK_E=16, SIGMOID=False, HAS_BIAS=False, RENORM=False, GROUPS=1, TOPK_GROUPS=1, TOP2_SUM=False)

Scales = tuple  # (w13_scale [E, nb, kb], w2_scale [E, nb, kb], (bn, bk)) of block-wise FP8 experts


def _scale_args(scales: Scales | None, w13: torch.Tensor) -> tuple[list, list, dict]:
    """The (S13, strides), (S2, strides) and FP8 constants the kernels take; dummies without scales."""
    if scales is None:
        return [w13, 0, 0], [w13, 0, 0], dict(FP8=False, SBN=1, SBK=1)
    s13, s2, (bn, bk) = scales
    return [s13, s13.stride(0), s13.stride(1)], [s2, s2.stride(0), s2.stride(1)], dict(FP8=True, SBN=bn, SBK=bk)


def fit_fp8_tiles(config: dict, block: tuple[int, int]) -> dict:
    """`config` with tiles inside one scale block: N tiles at most bn, and the GEMM's K tiles at most bk
    (the GEMV takes its K scales per column, so any K tile fits)."""
    bn, bk = block
    fitted = dict(config)
    for key in ("BLOCK_N", "BLOCK_N2"):
        if key in fitted:
            fitted[key] = min(fitted[key], bn)
    if config["path"] == "gemm":
        for key in ("BLOCK_K", "BLOCK_K2"):
            if key in fitted:
                fitted[key] = min(fitted[key], bk)
    return fitted


def _gemv(hidden, w13, w2, topk_weights, topk_ids, config, route=None, scales=None) -> torch.Tensor:
    """The GEMV form; with `route` = (router_logits, bias, routing constants, scaling), GEMV 1 computes
    the top-k itself and fills topk_weights / topk_ids for GEMV 2."""
    t, h = hidden.shape
    inter, top_k = w13.shape[1] // 2, topk_ids.shape[1]
    out = torch.empty_like(hidden)
    cache = torch.empty(t * top_k, inter, dtype=hidden.dtype, device=hidden.device)
    warps, stages = config.get("num_warps", 4), config.get("num_stages", 2)
    bn, bk = config["BLOCK_N"], config["BLOCK_K"]
    logits, bias, consts, scaling = route or (hidden, None, NO_ROUTE, 1.0)
    s13, s2, fp8 = _scale_args(scales, w13)
    split = config.get("SPLIT2", False)
    atomic = split and config.get("ATOMIC2", False)
    grid_n = triton.cdiv(inter, bn)
    zero = triton.next_power_of_2(triton.cdiv(h, grid_n)) if atomic else 0  # GEMV 1's slices of `out` to zero
    _gemv1_kernel[(t * top_k, grid_n)](
        hidden, w13, cache, topk_ids, topk_weights, logits, bias if bias is not None else logits, h, inter,
        hidden.stride(0), w13.stride(0), w13.stride(1), cache.stride(0), logits.stride(0), logits.shape[1], scaling,
        *s13, out, out.stride(0), ZERO=zero, **fp8, TOP_K=top_k, BLOCK_N=bn, BLOCK_K=bk, ROUTE=route is not None,
        **consts, num_warps=warps, num_stages=stages, **pdl_kwargs(hidden))
    bn2, bk2 = config.get("BLOCK_N2", bn), config.get("BLOCK_K2", bk)
    rows = torch.empty(t * top_k, h, dtype=hidden.dtype, device=hidden.device) if split and not atomic else out
    _gemv2_kernel[(t * top_k if split else t, triton.cdiv(h, bn2))](
        cache, w2, rows, topk_ids, topk_weights, h, inter, cache.stride(0), w2.stride(0), w2.stride(1),
        rows.stride(0), *s2, **fp8, ATOMIC=atomic, TOP_K=top_k, SPLIT=split, BLOCK_N=bn2, BLOCK_K=bk2,
        num_warps=warps, num_stages=stages, **pdl_kwargs(hidden))
    if split and not atomic:
        torch.sum(rows.view(t, top_k, h), dim=1, out=out)
    return out


def fused_moe_gemv(hidden: torch.Tensor, router_logits: torch.Tensor, routing: RoutingConfig,
                   correction_bias: torch.Tensor | None, w13: torch.Tensor, w2: torch.Tensor, config: dict,
                   scales: Scales | None = None) -> torch.Tensor:
    """The whole MoE of a small batch in two or three launches, the top-k routing fused into GEMV 1
    (the routing must pass `fused_routing_supported`; config["path"] == "gemv")."""
    t = hidden.shape[0]
    if t == 0:
        return torch.empty_like(hidden)
    ids = torch.empty(t, routing.top_k, dtype=torch.int32, device=hidden.device)
    weights = torch.empty(t, routing.top_k, dtype=torch.float32, device=hidden.device)
    consts = {k: v for k, v in routing_constants(routing, router_logits.shape[1]).items() if k != "TOP_K"}
    consts["HAS_BIAS"] = correction_bias is not None
    if scales is not None:
        config = fit_fp8_tiles(config, scales[2])
    return _gemv(hidden, w13, w2, weights, ids, config,
                 route=(router_logits, correction_bias, consts, routing.scaling_factor), scales=scales)


def fused_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, config: dict, scales: Scales | None = None) -> torch.Tensor:
    """hidden [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_* [T, k] -> [T, H] in hidden's dtype.
    `config` is one entry of the tuned table (configs.py): {"path": "gemm" | "gemv", block sizes…}.
    `scales`: block-wise FP8 experts (w13, w2 float8_e4m3fn), dequantized in registers."""
    t, h = hidden.shape
    if t == 0:
        return torch.empty_like(hidden)
    if scales is not None:
        config = fit_fp8_tiles(config, scales[2])
    if config["path"] == "gemv":
        return _gemv(hidden, w13, w2, topk_weights, topk_ids, config, scales=scales)
    e, two_i, _ = w13.shape
    inter, top_k = two_i // 2, topk_ids.shape[1]
    out = torch.empty_like(hidden)
    pairs = t * top_k
    cache = torch.empty(pairs, inter, dtype=hidden.dtype, device=hidden.device)
    warps, stages = config.get("num_warps", 4), config.get("num_stages", 2)
    bm, bn, bk, group_m = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config.get("GROUP_M", 1)
    sorted_ids, expert_ids, num_padded = moe_align_block_size(topk_ids, e, bm)
    max_m = expert_ids.shape[0]
    precision = _precision(hidden.dtype)
    s13, s2, fp8 = _scale_args(scales, w13)
    _gemm1_kernel[(max_m * triton.cdiv(inter, bn),)](
        hidden, w13, cache, sorted_ids, expert_ids, num_padded, pairs, h, inter,
        hidden.stride(0), w13.stride(0), w13.stride(1), cache.stride(0), *s13,
        TOP_K=top_k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, PRECISION=precision, **fp8,
        num_warps=warps, num_stages=stages)
    rows = torch.empty(pairs, h, dtype=hidden.dtype, device=hidden.device)
    bn2 = config.get("BLOCK_N2", bn)
    _gemm2_kernel[(max_m * triton.cdiv(h, bn2),)](
        cache, w2, rows, sorted_ids, expert_ids, num_padded, topk_weights, pairs, h, inter,
        cache.stride(0), w2.stride(0), w2.stride(1), rows.stride(0), *s2,
        BLOCK_M=bm, BLOCK_N=bn2, BLOCK_K=config.get("BLOCK_K2", bk), GROUP_M=group_m, PRECISION=precision, **fp8,
        num_warps=warps, num_stages=stages)
    torch.sum(rows.view(t, top_k, h), dim=1, out=out)
    return out
