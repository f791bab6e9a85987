"""torch_native: the reference attention backend in plain PyTorch, over the paged KV pool.

Runs on CPU and CUDA. Extend attends per request (prefix from the pool + new tokens, causal);
verify likewise, with the draft tree's mask in place of the causal one among the new tokens; decode gathers every
request's keys into one padded batch and attends in a single masked matmul.
Fast backends are tested against this one. An FP8 pool is read through `KVPool.dequantize`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jackfield.sdk import AttentionBackend, AttentionLayerInfo, Capabilities, ForwardBatch, hookimpl


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, layer: AttentionLayerInfo) -> torch.Tensor:
    """Boolean [.., q, k] mask: causal, and within the sliding window when the layer has one."""
    mask = k_pos.unsqueeze(-2) <= q_pos.unsqueeze(-1)
    if layer.sliding_window:
        mask &= k_pos.unsqueeze(-2) > q_pos.unsqueeze(-1) - layer.sliding_window
    return mask


def _tree_mask(fb: ForwardBatch, i: int, prefix: int, n: int, layer: AttentionLayerInfo) -> torch.Tensor:
    """Boolean [n, prefix + n] mask of request i's draft tree: the whole prefix (within the window)
    and the node's ancestors. A node's position is prefix + its depth (visible ancestors - 1)."""
    start = int(fb.tree_mask_indptr[i])
    tree = fb.tree_mask[start:start + n * n].view(n, n)
    k_pos = torch.arange(prefix, device=tree.device)
    q_pos = prefix + tree.sum(dim=1) - 1
    seen = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
    if layer.sliding_window:
        seen &= k_pos.unsqueeze(0) > (q_pos - layer.sliding_window).unsqueeze(1)
    return torch.cat([seen, tree], dim=1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, layer: AttentionLayerInfo) -> torch.Tensor:
    """q [B, Hkv, G*Q, D] (or [B,Hkv,G,D]); k/v [B, Hkv, L, D]; mask broadcastable to scores.

    Queries are grouped by their kv head, so plain (non-GQA) attention applies. Computed in float32.
    On the CPU only 4-D inputs reach PyTorch's flash kernel (3-D ones take the unfused path, half
    its speed on a 128-token prefill), so 3-D inputs get a batch dimension of 1.
    """
    if layer.logit_cap <= 0:
        if q.dim() == 3:
            return F.scaled_dot_product_attention(q.float()[None], k.float()[None], v.float()[None], attn_mask=mask,
                                                  scale=layer.scaling)[0]
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=layer.scaling)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * layer.scaling
    if layer.logit_cap > 0:
        scores = layer.logit_cap * torch.tanh(scores / layer.logit_cap)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.float())


class TorchNativeBackend(AttentionBackend):
    name = "torch_native"
    priority = 10
    capabilities = Capabilities(devices=("cpu", "cuda"), features=frozenset({"paged", "sliding_window", "logit_cap", "mixed",
                                                                             "fp8_kv_cache", "spec_verify"}))
    description = "Reference attention in plain PyTorch (CPU and CUDA)"
    decode_slots: torch.Tensor | None = None  # set per forward by init_forward_metadata

    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._per_request(q, layer, fb, verify=False)

    def forward_verify(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._per_request(q, layer, fb, verify=True)

    def _per_request(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch, verify: bool) -> torch.Tensor:
        h, hkv, d, dv = layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.v_dim
        group = h // hkv
        out = torch.empty(q.shape[0], h * dv, dtype=q.dtype, device=q.device)
        k_buf, v_buf = fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id)
        start = 0
        for i, (prefix, ext) in enumerate(zip(fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu)):
            total = prefix + ext
            slots = fb.req_to_token[fb.req_pool_indices[i], :total].long()
            k, v = fb.kv_pool.dequantize(layer.layer_id, k_buf[slots], v_buf[slots])
            k, v = k.transpose(0, 1), v.transpose(0, 1)  # [Hkv, L, D]
            qi = q[start:start + ext].view(ext, hkv, group, d).permute(1, 2, 0, 3).reshape(hkv, group * ext, d)
            if verify:
                mask = _tree_mask(fb, i, prefix, ext, layer).repeat(group, 1)
            else:
                q_pos = torch.arange(prefix, total, device=q.device).repeat(group)
                mask = _window_mask(q_pos, torch.arange(total, device=q.device), layer)
            o = _attend(qi, k, v, mask, layer)  # [Hkv, G*ext, Dv]
            out[start:start + ext] = o.view(hkv, group, ext, dv).permute(2, 0, 1, 3).reshape(ext, h * dv).to(q.dtype)
            start += ext
        return out

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        """For a decode batch, the pool slots of every request's keys, padded to the longest
        ([B * L]), gathered once here for all layers. Layers then read only tensors, so a compiled
        decode step has no per-step constants to recompile on."""
        self.decode_slots = None
        if fb.mode.is_decode() and fb.batch_size:
            max_len = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else int(fb.seq_lens.max())
            self.decode_slots = fb.req_to_token[fb.req_pool_indices, :max_len].reshape(-1).long()

    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        h, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
        bs = q.shape[0]
        slots = self.decode_slots
        if slots is None:  # a caller that skipped init_forward_metadata
            self.init_forward_metadata(fb)
            slots = self.decode_slots
        # index_select of flat slots: on the CPU about 4x faster than advanced indexing with [B, L]
        k, v = fb.kv_pool.dequantize(layer.layer_id, fb.kv_pool.k_buffer(layer.layer_id).index_select(0, slots),
                                     fb.kv_pool.v_buffer(layer.layer_id).index_select(0, slots))
        k = k.view(bs, -1, hkv, d).permute(0, 2, 1, 3)  # [B, Hkv, L, D]
        v = v.view(bs, k.shape[2], hkv, -1).permute(0, 2, 1, 3)  # [B, Hkv, L, Dv]
        qv = q.view(bs, hkv, h // hkv, d)
        if bs == 1 and not layer.sliding_window and layer.logit_cap <= 0:  # one request sees every key: no mask
            return _attend(qv, k, v, None, layer).reshape(bs, h * layer.v_dim).to(q.dtype)
        k_pos = torch.arange(k.shape[2], device=q.device)
        q_pos = (fb.seq_lens.long() - 1)
        mask = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
        if layer.sliding_window:
            mask &= k_pos.unsqueeze(0) > (q_pos - layer.sliding_window).unsqueeze(1)
        o = _attend(qv, k, v, mask[:, None, None, :], layer)  # [B, Hkv, G, Dv]
        return o.reshape(bs, h * layer.v_dim).to(q.dtype)


@hookimpl
def jackfield_register_attention_backends(register):
    register(TorchNativeBackend)
