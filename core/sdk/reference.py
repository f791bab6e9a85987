"""Reference operations: plain float32 PyTorch, short and exact, for any device.

They define what a component of each kind must compute. The conformance kit (`jackfield.testing`)
compares components against them, and `jackfield plugin new` builds its templates on them, so a
new plugin starts out correct and gets faster from there. Nothing here is meant to be fast.
"""
from __future__ import annotations

import torch

from jackfield.sdk.attention import AttentionLayerInfo
from jackfield.sdk.forward_batch import ForwardBatch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo) -> torch.Tensor:
    """Attention of one request in float32: q [n, num_heads*head_dim] holds the request's last n
    tokens, k and v [t, num_kv_heads, head_dim] its whole sequence (t >= n). Causal, grouped-query
    (query head h reads kv head h // (num_heads // num_kv_heads)), with the layer's sliding window
    and logit soft-cap. Returns float32 [n, num_heads*head_dim]."""
    n, t = q.shape[0], k.shape[0]
    group = layer.num_heads // layer.num_kv_heads
    qf = q.float().reshape(n, layer.num_heads, layer.head_dim).transpose(0, 1)        # [H, n, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)                    # [H, t, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = qf @ kf.transpose(1, 2) * layer.scaling
    if layer.logit_cap > 0:
        scores = layer.logit_cap * torch.tanh(scores / layer.logit_cap)
    q_pos = torch.arange(t - n, t, device=q.device)[:, None]
    k_pos = torch.arange(t, device=q.device)[None, :]
    visible = k_pos <= q_pos
    if layer.sliding_window:
        visible &= k_pos > q_pos - layer.sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(0, 1).reshape(n, layer.num_heads * layer.head_dim)


def request_kv(fb: ForwardBatch, layer: AttentionLayerInfo, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of request i's first `seq_len` tokens, gathered from the paged pool:
    two [seq_len, num_kv_heads, head_dim] tensors in the pool's dtype."""
    slots = fb.req_to_token[fb.req_pool_indices[i], :seq_len].long()
    return fb.kv_pool.k_buffer(layer.layer_id)[slots], fb.kv_pool.v_buffer(layer.layer_id)[slots]


def new_token_rows(fb: ForwardBatch) -> list[tuple[int, int, int]]:
    """(first row in q, number of new tokens, KV length) of each request of the batch: in DECODE
    mode request i owns row i; in EXTEND / MIXED mode the rows of `extend_start_loc`."""
    seq_lens = fb.seq_lens_cpu or tuple(fb.seq_lens.tolist())
    if fb.mode.is_decode():
        return [(i, 1, t) for i, t in enumerate(seq_lens)]
    new = fb.extend_seq_lens_cpu or tuple(fb.extend_seq_lens.tolist())
    starts = [sum(new[:i]) for i in range(len(new))]
    return list(zip(starts, new, seq_lens))


def paged_attention(q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
    """What `AttentionBackend.forward_extend` / `forward_decode` return, in float32: every
    request's new tokens attend to its K/V in the pool (which already holds the new tokens' K/V)."""
    out = torch.empty(q.shape[0], layer.num_heads * layer.head_dim, dtype=torch.float32, device=q.device)
    for i, (start, n, seq_len) in enumerate(new_token_rows(fb)):
        k, v = request_kv(fb, layer, i, seq_len)
        out[start:start + n] = attention(q[start:start + n], k, v, layer)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b in float32 (what a quantization method's `apply` approximates)."""
    y = x.float() @ weight.float().T
    return y + bias.float() if bias is not None else y


def lora(x: torch.Tensor, base_out: torch.Tensor, weights, token_slots: torch.Tensor,
         scalings: torch.Tensor) -> torch.Tensor:
    """What `LoRABackend.apply` returns, in float32, token by token: base_out + scaling[s] *
    (x A_s^T) B_s^T over each slice of the layer's `LoRAWeights` (s = the token's slot; -1: none)."""
    out = base_out.float().clone()
    r = weights.max_rank
    for t, slot in enumerate(token_slots.tolist()):
        if slot < 0:
            continue
        for j, (offset, size) in enumerate(weights.slices):
            a = weights.a[slot, j * r:(j + 1) * r].float()          # [r, in]
            b = weights.b[slot, offset:offset + size].float()       # [size, r]
            out[t, offset:offset + size] += float(scalings[slot]) * (b @ (a @ x[t].float()))
    return out
