"""Triton kernels of the `triton_mla` backend: attention over the latent KV pool, and the expanded
(non-absorbed) causal prefill.

Latent attention (`mla_decode`, `mla_extend`): each token's cache row is c = [c_kv (LORA) | k_pe
(ROPE)]; the absorbed query of every head is [q_lat (LORA) | q_pe (ROPE)]; scores are q_lat·c_kv +
q_pe·k_pe and the values are c_kv itself, so one load of a key tile serves both products. All heads
share the one latent, so a program takes a block of BLOCK_H heads (times BLOCK_T new tokens in an
extend) as the rows of its tiles and reads each key tile once for all of them. Decode splits each
request's keys over programs (split-KV; the last split of each (request, head block) to finish, or
without a semaphore buffer a merge launch, combines the splits by their log-sum-exp);
an extend program walks the keys up to its token block's causal frontier.

Expanded prefill (`ragged_prefill`): causal MHA among each request's new tokens, with K and V given
per token (the model expanded them from the latent) and a value width of its own.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jackfield.sdk import pdl_kwargs
from jackfield_plugins.attention.triton_kernels.common import dot_precision, last_split_arrives, merge_partials
from jackfield_plugins.attention.triton_kernels.decode import merge_splits


@triton.jit
def _latent_kernel(
    Q, KV, Out, MidO, MidLse, ReqToToken, ReqPoolIdx, SeqLens, ExtendStart, ExtendLens, Semaphores,
    stride_qt, stride_qh, stride_kt, stride_ot, stride_oh, stride_rt,
    stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh,
    num_heads, num_splits, sm_scale,
    LORA: tl.constexpr, ROPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    DECODE: tl.constexpr, DIRECT: tl.constexpr, MERGE_LAST: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:  # programmatic dependent launch (jackfield.sdk.pdl_kwargs): read nothing before the wait
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(1)  # axis 0 takes the (token block, head block) pairs: it has no 65535 limit
    head_blocks = tl.cdiv(num_heads, BLOCK_H)
    hb = tl.program_id(0) % head_blocks
    tb = tl.program_id(0) // head_blocks
    s = tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    if DECODE:
        ext_len = seq_len * 0 + 1
        q_start = b.to(tl.int64)
    else:
        ext_len = tl.load(ExtendLens + b)
        q_start = tl.load(ExtendStart + b).to(tl.int64)
    if tb * BLOCK_T >= ext_len:
        return
    prefix = seq_len - ext_len
    rows = tl.arange(0, BLOCK_T * BLOCK_H)
    tok = tb * BLOCK_T + rows // BLOCK_H
    head = hb * BLOCK_H + rows % BLOCK_H
    r_mask = (tok < ext_len) & (head < num_heads)
    q_pos = prefix + tok
    q_row = Q + (q_start + tok) * stride_qt + head * stride_qh
    offs_c = tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    c_mask = offs_c < LORA
    p_mask = offs_r < ROPE
    q_lat = tl.load(q_row[:, None] + offs_c[None, :], mask=r_mask[:, None] & c_mask[None, :], other=0.0)
    q_pe = tl.load(q_row[:, None] + LORA + offs_r[None, :], mask=r_mask[:, None] & p_mask[None, :], other=0.0)

    row = tl.load(ReqPoolIdx + b).to(tl.int64) * stride_rt
    hi = tl.minimum(seq_len, prefix + (tb + 1) * BLOCK_T)  # the block's causal frontier
    split_len = tl.cdiv(tl.cdiv(hi, num_splits), BLOCK_N) * BLOCK_N
    start = s * split_len
    end = tl.minimum(start + split_len, hi)
    m_i = tl.full([BLOCK_T * BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_T * BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_T * BLOCK_H, BLOCK_C], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        slots = tl.load(ReqToToken + row + offs_n, mask=n_mask, other=0).to(tl.int64)
        c_kv = tl.load(KV + slots[:, None] * stride_kt + offs_c[None, :], mask=n_mask[:, None] & c_mask[None, :],
                       other=0.0)
        k_pe = tl.load(KV + slots[:, None] * stride_kt + LORA + offs_r[None, :],
                       mask=n_mask[:, None] & p_mask[None, :], other=0.0)
        qk = tl.dot(q_lat, tl.trans(c_kv), input_precision=PRECISION)
        qk = tl.dot(q_pe, tl.trans(k_pe), qk, input_precision=PRECISION)
        qk = (qk * (sm_scale * 1.4426950408889634)).to(tl.float32)
        qk = tl.where(n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        acc = acc * alpha[:, None] + tl.dot(p.to(c_kv.dtype), c_kv, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    has = l_i > 0.0
    safe_l = tl.where(has, l_i, 1.0)
    part = tl.where(has[:, None], acc / safe_l[:, None], 0.0)
    o_mask = r_mask[:, None] & c_mask[None, :]
    if DIRECT:
        tl.store(Out + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + offs_c[None, :],
                 part.to(Out.dtype.element_ty), mask=o_mask)
    else:
        lse = tl.where(has, m_i + tl.log2(safe_l), float("-inf"))
        tl.store(MidO + b * stride_mob + head[:, None] * stride_moh + s * stride_mos + offs_c[None, :], part,
                 mask=o_mask)
        tl.store(MidLse + b * stride_mlb + head * stride_mlh + s, lse, mask=r_mask)
        if MERGE_LAST:  # decode: the last split of this (request, head block) merges them all
            if last_split_arrives(Semaphores + b * head_blocks + hb, num_splits):
                active = tl.where(split_len > 0, tl.cdiv(hi, tl.maximum(split_len, 1)), 0)
                merge_partials(MidO + b * stride_mob + head[:, None] * stride_moh + offs_c[None, :],
                               MidLse + b * stride_mlb + head * stride_mlh,
                               Out + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + offs_c[None, :],
                               o_mask, r_mask, tl.minimum(active, num_splits), stride_mos, BLOCK_T * BLOCK_H, BLOCK_C)
                tl.store(Semaphores + b * head_blocks + hb, 0)


@triton.jit
def _ragged_kernel(
    Q, K, V, Out, ExtendStart, ExtendLens,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    sm_scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.num_programs(2) - 1 - tl.program_id(2)  # the last blocks see the most keys: start them first
    ext_len = tl.load(ExtendLens + b)
    if mb * BLOCK_M >= ext_len:
        return
    start = tl.load(ExtendStart + b).to(tl.int64)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < ext_len
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_v = tl.arange(0, BLOCK_DV)
    d_mask = offs_d < DQK
    v_mask = offs_v < DV
    q = tl.load(Q + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    hi = tl.minimum(ext_len, (mb + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        rows = (start + offs_n)[:, None]
        k = tl.load(K + rows * stride_kt + h * stride_kh + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :],
                    other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        qk = (qk * (sm_scale * 1.4426950408889634)).to(tl.float32)
        qk = tl.where(n_mask[None, :] & (offs_n[None, :] <= offs_m[:, None]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        v = tl.load(V + rows * stride_vt + h * stride_vh + offs_v[None, :], mask=n_mask[:, None] & v_mask[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(Out + (start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_v[None, :],
             out.to(Out.dtype.element_ty), mask=m_mask[:, None] & v_mask[None, :])


def _latent_launch(q, kv, out, mid_o, mid_lse, req_to_token, req_pool_indices, seq_lens, extend_start, extend_lens,
                   grid_t: int, num_splits: int, v_dim: int, sm_scale: float, block_h: int, block_t: int,
                   block_n: int, num_warps: int, num_stages: int, semaphores: torch.Tensor | None = None) -> None:
    num_heads, dim = q.shape[1], q.shape[2]
    rope = dim - v_dim
    decode = extend_start is None
    direct = num_splits == 1
    merge_last = decode and not direct and semaphores is not None
    heads_per = triton.cdiv(num_heads, block_h)
    dummy = seq_lens
    _latent_kernel[(heads_per * grid_t, req_pool_indices.shape[0], num_splits)](
        q, kv, out, mid_o if not direct else out, mid_lse if not direct else seq_lens, req_to_token,
        req_pool_indices, seq_lens, dummy if decode else extend_start, dummy if decode else extend_lens,
        semaphores if merge_last else dummy,
        q.stride(0), q.stride(1), kv.stride(0), out.stride(0), out.stride(1), req_to_token.stride(0),
        *(mid_o.stride()[:3] if not direct else (0, 0, 0)), *(mid_lse.stride()[:2] if not direct else (0, 0)),
        num_heads, num_splits, sm_scale,
        LORA=v_dim, ROPE=rope, BLOCK_C=triton.next_power_of_2(v_dim), BLOCK_R=max(16, triton.next_power_of_2(rope)),
        BLOCK_H=block_h, BLOCK_T=block_t, BLOCK_N=block_n, DECODE=decode, DIRECT=direct,
        MERGE_LAST=merge_last, PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
        **pdl_kwargs(q))


def decode_block_h(num_heads: int) -> int:
    """Heads per decode program: at least 16 rows for the tensor cores, at most 64."""
    return max(16, min(64, triton.next_power_of_2(num_heads)))


def mla_decode(q: torch.Tensor, kv: torch.Tensor, out: torch.Tensor, req_to_token: torch.Tensor,
               req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, mid_o: torch.Tensor, mid_lse: torch.Tensor,
               num_splits: int, sm_scale: float, config: tuple[int, int, int, int] | None = None,
               semaphores: torch.Tensor | None = None) -> None:
    """One absorbed query per request against its latents, into `out`.

    q: [bs, heads, LORA + ROPE]; kv: the pool's [slots, 1, LORA + ROPE]; out: [bs, heads, LORA];
    mid_o: float32 [>= bs, heads, >= num_splits, LORA]; mid_lse: float32 [>= bs, heads, >= num_splits].
    config: (BLOCK_H, BLOCK_N, num_warps, num_stages), for tuning.
    semaphores: int32, zero, at least bs x head blocks (cdiv(heads, BLOCK_H)) elements: the last split
    of each (request, head block) merges the splits; None: the merge kernel.
    """
    bs, heads, _ = q.shape
    if bs == 0:
        return
    v_dim = out.shape[2]
    block_h, block_n, warps, stages = config or (decode_block_h(heads), 32, 8 if heads >= 64 else 4, 2)
    if semaphores is not None and semaphores.numel() < bs * triton.cdiv(heads, block_h):
        semaphores = None
    _latent_launch(q, kv.view(kv.shape[0], -1), out, mid_o, mid_lse, req_to_token, req_pool_indices, seq_lens,
                   None, None, 1, num_splits, v_dim, sm_scale, block_h, 1, block_n, warps, stages, semaphores)
    if num_splits == 1 or semaphores is not None:
        return
    merge_splits(mid_o, mid_lse, out, bs, heads, num_splits, v_dim, triton.next_power_of_2(v_dim), 2, pdl_kwargs(q),
                 num_warps=8)


def mla_extend(q: torch.Tensor, kv: torch.Tensor, out: torch.Tensor, req_to_token: torch.Tensor,
               req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, extend_start_loc: torch.Tensor,
               extend_seq_lens: torch.Tensor, max_extend_len: int, sm_scale: float) -> None:
    """Absorbed queries of every request's new tokens over its cached and new latents (causal).
    q: [tokens, heads, LORA + ROPE]; out: [tokens, heads, LORA]; `max_extend_len` bounds the grid."""
    if req_pool_indices.shape[0] == 0 or max_extend_len <= 0:
        return
    heads = q.shape[1]
    block_h = max(1, min(16, triton.next_power_of_2(heads)))
    block_t = max(1, 32 // block_h)  # 32 query rows (tokens x heads) share each key tile
    _latent_launch(q, kv.view(kv.shape[0], -1), out, None, None, req_to_token, req_pool_indices, seq_lens,
                   extend_start_loc, extend_seq_lens, triton.cdiv(max_extend_len, block_t), 1, out.shape[2],
                   sm_scale, block_h, block_t, 32, 8, 2)


def ragged_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   extend_start_loc: torch.Tensor, extend_seq_lens: torch.Tensor, max_extend_len: int,
                   sm_scale: float) -> None:
    """Causal attention among each request's new tokens. q, k: [tokens, heads, Dqk]; v, out:
    [tokens, heads, Dv]; request i owns rows extend_start_loc[i] .. + extend_seq_lens[i]."""
    bs = extend_seq_lens.shape[0]
    if bs == 0 or max_extend_len <= 0:
        return
    heads, dqk, dv = q.shape[1], q.shape[2], v.shape[2]
    block_m, block_n, warps = (64, 64, 4) if max(dqk, dv) <= 128 else (64, 32, 8)
    _ragged_kernel[(bs, heads, triton.cdiv(max_extend_len, block_m))](
        q, k, v, out, extend_start_loc, extend_seq_lens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        sm_scale, DQK=dqk, DV=dv, BLOCK_DQK=triton.next_power_of_2(dqk), BLOCK_DV=triton.next_power_of_2(dv),
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=2)


__all__ = ["mla_decode", "mla_extend", "ragged_prefill", "decode_block_h"]
