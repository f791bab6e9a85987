"""Split-KV attention of a speculative verify batch: each request's draft tree after its cached prefix.

A verify batch is decode-like: a few new tokens per request (the tree's nodes) against a long
cached prefix. The extend kernel gives it one program per (request, query head) walking the whole
prefix, which leaves most of the GPU idle at small batches and reads every K/V row once per query
head. Here, as in split-KV decode, stage 1 runs one program per (request, KV head, row block,
split): its rows are every (node, query head of the group) pair, so each K/V row of the split is
read once for the whole group and the whole tree; it writes a normalised partial output and its
log-sum-exp (base 2). Stage 2 is the decode merge kernel, one program per (token, query head).

Masking: prefix keys are visible to every node; a node sees the tree's keys that its [n, n] row
of the tree mask marks (its ancestors and itself): each key block goes through the extend
kernel's block update in tree mode, with a row's node index as its query index. Splits are a fixed count per launch (an upper
bound inside a CUDA graph); empty ones write lse = -inf and the merge ignores them. Sliding
windows are not handled here: the backend keeps the extend kernel for them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield_plugins.attention.triton_kernels.common import block_dmodel, check_head_layout, dot_precision
from jackfield_plugins.attention.triton_kernels.decode import merge_splits
from jackfield_plugins.attention.triton_kernels.extend import _attend_block

MAX_ROWS = 64  # (node, head) rows per program; larger trees take several row blocks
MERGE_SPLITS = 32  # the merge's split tile: one build for any split count up to the backend's 32


@triton.jit(do_not_specialize=["num_splits"])  # one build for every split count (eager batches vary it)
def _verify_split_kernel(
    Q, K, V, MidO, MidLse, Out, ReqToToken, ReqPoolIdx, SeqLens, ExtendStart, ExtendLens, TreeMask, TreeIndptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
    stride_mot, stride_moh, stride_mos, stride_mlt, stride_mlh, stride_ot, stride_oh,
    num_splits, sm_scale, logit_cap, v_scale,
    GROUP: tl.constexpr, ROW_BLOCKS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, USE_CAP: tl.constexpr, PRECISION: tl.constexpr,
    DIRECT: tl.constexpr,
):
    b = tl.program_id(0)
    g = tl.program_id(1) // ROW_BLOCKS
    rb = tl.program_id(1) % ROW_BLOCKS
    s = tl.program_id(2)
    n_new = tl.load(ExtendLens + b)
    seq_len = tl.load(SeqLens + b)
    prefix = seq_len - n_new
    q_start = tl.load(ExtendStart + b).to(tl.int64)
    row = tl.load(ReqPoolIdx + b).to(tl.int64) * stride_rt
    tree_base = tl.load(TreeIndptr + b)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = s * split_len
    end = tl.minimum(start + split_len, seq_len)

    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    node = rows // GROUP
    heads = g * GROUP + rows % GROUP
    r_mask = node < n_new
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    tok = q_start + node
    io_mask = r_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + tok[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :], mask=io_mask, other=0.0)

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):  # the extend kernel's masked block, in tree mode, on this split
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, prefix + node, prefix + node, n0, end, K, V, ReqToToken, row,
                                      g, offs_d, d_mask, stride_kt, stride_kh, stride_vt, stride_vh, sm_scale,
                                      logit_cap, 0, TreeMask, tree_base, n_new, prefix, node, r_mask, TreeMask,
                                      q_start, BLOCK_N, USE_CAP, False, True, PRECISION, True)

    has = l_i > 0.0
    safe_l = tl.where(has, l_i, 1.0)
    part = tl.where(has[:, None], acc * v_scale / safe_l[:, None], 0.0)
    if DIRECT:  # one split: this is the output
        tl.store(Out + tok[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 part.to(Out.dtype.element_ty), mask=io_mask)
    else:
        lse = tl.where(has, m_i + tl.log2(safe_l), float("-inf"))
        tl.store(MidO + tok[:, None] * stride_mot + heads[:, None] * stride_moh + s * stride_mos + offs_d[None, :],
                 part, mask=io_mask)
        tl.store(MidLse + tok * stride_mlt + heads * stride_mlh + s, lse, mask=r_mask)


def verify_rows(group: int, tokens_per_request: int) -> tuple[int, int]:
    """(BLOCK_R, row blocks) for `tokens_per_request` nodes times `group` query heads per KV head."""
    rows = group * tokens_per_request
    block = min(MAX_ROWS, max(16, triton.next_power_of_2(rows)))
    return block, triton.cdiv(rows, block)


def verify_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, out: torch.Tensor,
                     req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     extend_start_loc: torch.Tensor, extend_seq_lens: torch.Tensor, max_extend_len: int,
                     tree_mask: torch.Tensor, tree_mask_indptr: torch.Tensor, mid_o: torch.Tensor,
                     mid_lse: torch.Tensor, num_splits: int, sm_scale: float, logit_cap: float = 0.0,
                     k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Every request's draft-tree nodes against its prefix and their tree ancestors, into `out`.

    q, out: [num_tokens, num_heads, head_dim]; request i's nodes are rows extend_start_loc[i] ..
    + extend_seq_lens[i], its KV (prefix, then the nodes' own K/V, already in the pool) is
    seq_lens[i] long, and its [n, n] tree mask starts at tree_mask[tree_mask_indptr[i]].
    `max_extend_len` bounds the nodes per request (sizes the grid). mid_o: float32
    [>= num_tokens, num_heads, >= num_splits, head_dim]; mid_lse: float32 [>= num_tokens,
    num_heads, >= num_splits] (scratch, may be static CUDA-graph buffers; unused with one split).
    """
    for name, t in (("q", q), ("out", out), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        check_head_layout(t, name)
    num_tokens, num_heads, head_dim = q.shape
    bs, num_kv_heads = int(req_pool_indices.shape[0]), k_buffer.shape[1]
    if bs == 0 or num_tokens == 0:
        return
    group = num_heads // num_kv_heads
    block_d = block_dmodel(head_dim)
    block_r, row_blocks = verify_rows(group, max_extend_len)
    direct = num_splits == 1
    _verify_split_kernel[(bs, num_kv_heads * row_blocks, num_splits)](
        q, k_buffer, v_buffer, mid_o, mid_lse, out, req_to_token, req_pool_indices, seq_lens, extend_start_loc,
        extend_seq_lens, tree_mask, tree_mask_indptr,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        num_splits, sm_scale * k_scale, logit_cap if logit_cap > 0 else 1.0, v_scale,
        GROUP=group, ROW_BLOCKS=row_blocks, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_R=block_r,
        BLOCK_N=32 if block_d > 128 else 64, USE_CAP=logit_cap > 0, PRECISION=dot_precision(q.dtype), DIRECT=direct,
        num_warps=4, num_stages=2,
    )
    if direct:
        return
    merge_splits(mid_o, mid_lse, out, num_tokens, num_heads, num_splits, head_dim, block_d, MERGE_SPLITS,
                 {"PDL": False})
