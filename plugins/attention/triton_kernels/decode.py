"""Split-KV flash-decoding over the token-slot KV pool.

Stage 1 runs one program per (request, kv head, split). It loads the queries of every head that
shares the kv head (GQA), so each K/V row is read once per group, walks its chunk of the request's
token slots through `req_to_token`, and writes a normalised partial output and its log-sum-exp
(base 2). The splits of a (request, kv head) are then merged in one of two ways: by the last of
its programs to finish (each counts itself in on a per-(request, kv head) semaphore after its
stores; the one that completes the count reads the partials back, writes the output and resets the
semaphore for the next launch: no second kernel), or, without a semaphore buffer, by stage 2, one
program per (request, query head). With a single split (large batches) stage 1 writes the output
itself.

Splits whose chunk is empty (short requests, padded CUDA-graph rows) write lse = -inf and are
ignored by the merge, so the split count can be a fixed upper bound inside a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs
from jackfield_plugins.attention.triton_kernels.common import (
    block_dmodel, check_head_layout, dot_precision, last_split_arrives, merge_partials, scale_logits,
)


@triton.jit
def _decode_split_kernel(
    Q, K, V, MidO, MidLse, Out, ReqToToken, ReqPoolIdx, SeqLens, Semaphores,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
    stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh, stride_ob, stride_oh,
    num_splits, sm_scale, logit_cap, window, v_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, USE_CAP: tl.constexpr, USE_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
    DIRECT: tl.constexpr, MERGE_LAST: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.program_id(2)
    num_groups = tl.num_programs(1)
    seq_len = tl.load(SeqLens + b)
    row = tl.load(ReqPoolIdx + b).to(tl.int64)
    lo = seq_len * 0
    if USE_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    split_len = tl.cdiv(tl.cdiv(seq_len - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + s * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    heads = g * GROUP + offs_h
    h_mask = offs_h < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=h_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        slots = tl.load(ReqToToken + row * stride_rt + offs_n, mask=n_mask, other=0).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K + slots[:, None] * stride_kt + g * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION)
        qk = scale_logits(qk, sm_scale, logit_cap, USE_CAP)
        qk = tl.where(n_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(V + slots[:, None] * stride_vt + g * stride_vh + offs_d[None, :], mask=kv_mask,
                    other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    has = l_i > 0.0
    safe_l = tl.where(has, l_i, 1.0)
    part = tl.where(has[:, None], acc * v_scale / safe_l[:, None], 0.0)
    if DIRECT:  # one split: this is the output
        tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], part.to(Out.dtype.element_ty),
                 mask=h_mask[:, None] & d_mask[None, :])
    else:
        lse = tl.where(has, m_i + tl.log2(safe_l), float("-inf"))
        tl.store(MidO + b * stride_mob + heads[:, None] * stride_moh + s * stride_mos + offs_d[None, :], part,
                 mask=h_mask[:, None] & d_mask[None, :])
        tl.store(MidLse + b * stride_mlb + heads * stride_mlh + s, lse, mask=h_mask)
        if MERGE_LAST:
            if last_split_arrives(Semaphores + b * num_groups + g, num_splits):
                active = tl.where(split_len > 0, tl.cdiv(seq_len - lo, tl.maximum(split_len, 1)), 0)
                merge_partials(MidO + b * stride_mob + heads[:, None] * stride_moh + offs_d[None, :],
                               MidLse + b * stride_mlb + heads * stride_mlh,
                               Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                               h_mask[:, None] & d_mask[None, :], h_mask, tl.minimum(active, num_splits), stride_mos,
                               BLOCK_H, BLOCK_D)
                tl.store(Semaphores + b * num_groups + g, 0)


@triton.jit(do_not_specialize=["num_splits"])  # speculative verify launches it with varying split counts
def _decode_merge_kernel(
    MidO, MidLse, Out,
    stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh, stride_ob, stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(MidLse + b * stride_mlb + h * stride_mlh + offs_s, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    parts = tl.load(MidO + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos + offs_d[None, :],
                    mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=d_mask)


def decode_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, out: torch.Tensor,
                     req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     mid_o: torch.Tensor, mid_lse: torch.Tensor, num_splits: int, sm_scale: float,
                     logit_cap: float = 0.0, sliding_window: int | None = None,
                     config: tuple[int, int, int] | None = None, k_scale: float = 1.0, v_scale: float = 1.0,
                     semaphores: torch.Tensor | None = None) -> None:
    """One decode query per request against its whole KV, written into `out`.

    q, out: [bs, num_heads, head_dim]; k_buffer, v_buffer: [slots, num_kv_heads, head_dim];
    mid_o: float32 [>= bs, num_heads, >= num_splits, head_dim]; mid_lse: float32
    [>= bs, num_heads, >= num_splits] (scratch, may be static CUDA-graph buffers).
    config: (BLOCK_N, num_warps, num_stages) of stage 1, for tuning (benchmarks/tune_triton_decode.py).
    An FP8 pool's K and V are multiplied by k_scale and v_scale (folded into the logit scale and
    the output).
    semaphores: int32, at least bs * num_kv_heads elements, all zero (they are zero again when the
    kernel ends): the last split of each (request, kv head) merges them, no merge kernel is launched.
    None: the merge kernel.
    """
    for name, t in (("q", q), ("out", out), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        check_head_layout(t, name)
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    group = num_heads // num_kv_heads
    if bs == 0:
        return
    block_d = block_dmodel(head_dim)
    block_n, warps, stages = config or (32 if block_d > 128 else 64, 4, 2)
    direct = num_splits == 1
    merge_last = not direct and semaphores is not None
    if merge_last and (semaphores.dtype != torch.int32 or semaphores.numel() < bs * num_kv_heads):
        raise ValueError(f"semaphores must be int32 with at least {bs * num_kv_heads} elements, "
                         f"got {semaphores.dtype} with {semaphores.numel()}")
    _decode_split_kernel[(bs, num_kv_heads, num_splits)](
        q, k_buffer, v_buffer, mid_o, mid_lse, out, req_to_token, req_pool_indices, seq_lens,
        semaphores if merge_last else seq_lens,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        num_splits, sm_scale * k_scale, logit_cap if logit_cap > 0 else 1.0, sliding_window or 0, v_scale,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, USE_CAP=logit_cap > 0, USE_WINDOW=sliding_window is not None,
        PRECISION=dot_precision(q.dtype), DIRECT=direct, MERGE_LAST=merge_last, num_warps=warps,
        num_stages=stages, **pdl_kwargs(q),
    )
    if direct or merge_last:
        return
    merge_splits(mid_o, mid_lse, out, bs, num_heads, num_splits, head_dim, block_d, 2, pdl_kwargs(q))


def merge_splits(mid_o: torch.Tensor, mid_lse: torch.Tensor, out: torch.Tensor, rows: int, num_heads: int,
                 num_splits: int, head_dim: int, block_d: int, min_block_s: int, pdl: dict,
                 num_warps: int | None = None) -> None:
    """out[row, head] = the split partials of (row, head) merged by their log-sum-exps. The split tile is
    at least min_block_s (a larger floor: one build for every split count under it); num_warps None:
    4 up to head dims of 128, else 8."""
    _decode_merge_kernel[(rows, num_heads)](
        mid_o, mid_lse, out,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1), num_splits,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(min_block_s, triton.next_power_of_2(num_splits)),
        num_warps=num_warps or (4 if block_d <= 128 else 8), **pdl,
    )
