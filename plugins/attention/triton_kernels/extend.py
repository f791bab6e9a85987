"""Variable-length causal extend (prefill) attention over the token-slot KV pool, in one launch.

One program per (request, query head, block of new tokens). The new tokens' K/V are already in the
pool, so every key — cached prefix and new alike — is read through `req_to_token`. A query at
position p sees keys at positions <= p (and > p - window with a sliding window); key blocks past
the causal frontier of the query block, or before its window, are never loaded.

Speculative verify (USE_TREE) runs the same kernel: request b's new tokens are a draft tree, and
among them a query sees only the keys its [n, n] row of the tree mask marks (its ancestors and
itself; they come before it, so the causal frontier still bounds the loop). Prefix keys stay
visible, within the window of the query's own position (prefix + its depth, from `positions`);
a tree key is windowed by its own position too, so a chain deeper than the window drops its start.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield_plugins.attention.triton_kernels.common import (
    block_dmodel, check_head_layout, dot_precision, scale_logits,
)


@triton.jit
def _attend_block(acc, m_i, l_i, q, q_pos, win_pos, n0, hi, K, V, ReqToToken, row, kvh, offs_d, d_mask,
                  stride_kt, stride_kh, stride_vt, stride_vh, sm_scale, logit_cap, window,
                  TreeMask, tree_base, ext_len, prefix, offs_m, m_mask, Positions, q_start,
                  BLOCK_N: tl.constexpr, USE_CAP: tl.constexpr, USE_WINDOW: tl.constexpr,
                  MASKED: tl.constexpr, PRECISION: tl.constexpr, USE_TREE: tl.constexpr):
    """Online-softmax update with one block of keys; MASKED blocks apply the causal/window mask."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi
    slots = tl.load(ReqToToken + row + offs_n, mask=n_mask, other=0).to(tl.int64)
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + slots[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION)
    qk = scale_logits(qk, sm_scale, logit_cap, USE_CAP)
    if MASKED:
        keep = n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            in_window = offs_n[None, :] > win_pos[:, None] - window
            if USE_TREE:  # a tree key sits at its own position (prefix + its depth), not at its index
                is_node = (offs_n >= prefix) & n_mask
                key_pos = tl.load(Positions + q_start + (offs_n - prefix), mask=is_node, other=0)
                in_window = tl.where(is_node[None, :], key_pos[None, :] > win_pos[:, None] - window, in_window)
            keep = keep & in_window
        if USE_TREE:
            in_tree = (offs_n[None, :] >= prefix) & n_mask[None, :] & m_mask[:, None]
            bit = tl.load(TreeMask + tree_base + offs_m[:, None] * ext_len + (offs_n[None, :] - prefix),
                          mask=in_tree, other=0)
            keep = keep & ((offs_n[None, :] < prefix) | (bit != 0))
        qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    p = tl.exp2(qk - m_ref[:, None])
    alpha = tl.exp2(m_i - m_ref)
    v = tl.load(V + slots[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=kv_mask,
                other=0.0).to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _extend_kernel(
    Q, Out, K, V, ReqToToken, ReqPoolIdx, SeqLens, ExtendStart, ExtendLens, TreeMask, TreeIndptr, Positions,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
    sm_scale, logit_cap, window, v_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, USE_CAP: tl.constexpr, USE_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
    HEAVY_FIRST: tl.constexpr, USE_TREE: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    if HEAVY_FIRST:  # the grid runs in z order: the last query blocks see the most keys, so start them first
        mb = tl.num_programs(2) - 1 - mb
    ext_len = tl.load(ExtendLens + b)
    if mb * BLOCK_M >= ext_len:
        return
    seq_len = tl.load(SeqLens + b)
    prefix = seq_len - ext_len
    q_start = tl.load(ExtendStart + b).to(tl.int64)
    row = tl.load(ReqPoolIdx + b).to(tl.int64) * stride_rt
    kvh = h // GROUP

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < ext_len
    q_pos = prefix + offs_m
    win_pos = q_pos
    tree_base = q_start * 0
    if USE_TREE:
        win_pos = tl.load(Positions + q_start + offs_m, mask=m_mask, other=0)
        tree_base = tl.load(TreeIndptr + b)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = tl.minimum(seq_len, prefix + (mb + 1) * BLOCK_M)
    # keys up to the block's first query position are visible to every row: no mask needed there
    split = (prefix + mb * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    lo = seq_len * 0
    if USE_WINDOW:
        lo = tl.maximum(prefix + mb * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
        split = lo
        if USE_TREE:  # a node sits at prefix + depth, not at prefix + index: its window starts earlier
            lo = tl.maximum(prefix - window + 1, 0) // BLOCK_N * BLOCK_N
            split = lo
    if USE_TREE:
        split = tl.minimum(split, prefix // BLOCK_N * BLOCK_N)
    for n0 in range(lo, split, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, q_pos, win_pos, n0, hi, K, V, ReqToToken, row, kvh, offs_d,
                                      d_mask, stride_kt, stride_kh, stride_vt, stride_vh, sm_scale, logit_cap, window,
                                      TreeMask, tree_base, ext_len, prefix, offs_m, m_mask, Positions, q_start,
                                      BLOCK_N, USE_CAP, USE_WINDOW, False, PRECISION, USE_TREE)
    for n0 in range(split, hi, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, q_pos, win_pos, n0, hi, K, V, ReqToToken, row, kvh, offs_d,
                                      d_mask, stride_kt, stride_kh, stride_vt, stride_vh, sm_scale, logit_cap, window,
                                      TreeMask, tree_base, ext_len, prefix, offs_m, m_mask, Positions, q_start,
                                      BLOCK_N, USE_CAP, USE_WINDOW, True, PRECISION, USE_TREE)

    out = acc * v_scale / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(Out + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def extend_tiles(head_dim: int, device: torch.device) -> tuple[int, int, int, int, bool]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, heavy_first), measured on H100; head dim 256 wants
    Hopper's shared memory."""
    if block_dmodel(head_dim) <= 128:
        return 64, 64, 4, 2, False
    big_smem = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
    return (128, 64, 8, 2, False) if big_smem else (64, 32, 4, 2, False)


def extend_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, out: torch.Tensor,
                     req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     extend_start_loc: torch.Tensor, extend_seq_lens: torch.Tensor, max_extend_len: int,
                     sm_scale: float, logit_cap: float = 0.0, sliding_window: int | None = None,
                     config: tuple[int, int, int, int, bool] | None = None, k_scale: float = 1.0,
                     v_scale: float = 1.0, tree: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """Causal attention of every request's new tokens over its prefix and themselves, into `out`.

    q, out: [num_tokens, num_heads, head_dim]; request i's new tokens are rows
    extend_start_loc[i] .. + extend_seq_lens[i] at positions seq_lens[i] - extend_seq_lens[i] onward.
    `max_extend_len` only sizes the grid: any upper bound of extend_seq_lens works.
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages, heavy_first), for tuning
    (benchmarks/tune_triton_extend.py). An FP8 pool's K and V are multiplied by k_scale and v_scale.
    tree: (tree_mask, tree_mask_indptr, positions) of a speculative verify batch
    (jackfield.sdk.ForwardBatch); the new tokens then attend as a tree.
    """
    for name, t in (("q", q), ("out", out), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        check_head_layout(t, name)
    num_heads, head_dim = q.shape[1], q.shape[2]
    bs = int(req_pool_indices.shape[0])
    if bs == 0 or max_extend_len <= 0:
        return
    group = num_heads // k_buffer.shape[1]
    block_m, block_n, num_warps, num_stages, heavy_first = config or extend_tiles(head_dim, q.device)
    grid = (bs, num_heads, triton.cdiv(max_extend_len, block_m))
    tree_mask, tree_indptr, positions = tree if tree is not None else (seq_lens, seq_lens, seq_lens)
    _extend_kernel[grid](
        q, out, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, extend_start_loc, extend_seq_lens,
        tree_mask, tree_indptr, positions,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1), req_to_token.stride(0),
        sm_scale * k_scale, logit_cap if logit_cap > 0 else 1.0, sliding_window or 0, v_scale,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_dmodel(head_dim), BLOCK_M=block_m, BLOCK_N=block_n,
        USE_CAP=logit_cap > 0, USE_WINDOW=sliding_window is not None, PRECISION=dot_precision(q.dtype),
        HEAVY_FIRST=heavy_first, USE_TREE=tree is not None, num_warps=num_warps, num_stages=num_stages,
    )
