"""torch_native_mla: the reference attention backend for the latent KV layout (MLA), plain PyTorch.

The pool holds one latent per token; the absorbed queries attend to it as MQA whose values are the
latent's first kv_lora_rank columns (the pool's `v_buffer` view), so extend and decode are the
per-head reference's own code. It also runs the expanded (non-absorbed) prefill, `forward_ragged`:
causal attention among each request's new tokens. Runs on CPU and CUDA; the MLA kernels are tested
against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jackfield.sdk import AttentionLayerInfo, Capabilities, ForwardBatch, hookimpl
from jackfield_plugins.attention.torch_native import TorchNativeBackend


class TorchNativeMLABackend(TorchNativeBackend):
    name = "torch_native_mla"
    priority = 10
    capabilities = Capabilities(devices=("cpu", "cuda"), features=frozenset({"paged", "mixed", "ragged_prefill"}))
    no_verify_reason = "draft-tree verify over the latent (MLA) KV layout is not implemented"
    description = "Reference MLA attention over the latent KV pool in plain PyTorch (CPU and CUDA)"
    kv_layout_kind = "latent"
    supports_ragged_prefill = True

    def forward_ragged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo,
                       fb: ForwardBatch) -> torch.Tensor:
        h, dv = layer.num_heads, layer.v_dim
        out = torch.empty(q.shape[0], h * dv, dtype=q.dtype, device=q.device)
        start = 0
        for ext in fb.extend_seq_lens_cpu:
            rows = slice(start, start + ext)
            qi, ki, vi = (x[rows].view(ext, h, -1).transpose(0, 1).float() for x in (q, k, v))
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=layer.scaling)  # [H, ext, Dv]
            out[rows] = o.transpose(0, 1).reshape(ext, h * dv).to(q.dtype)
            start += ext
        return out


@hookimpl
def jackfield_register_attention_backends(register):
    register(TorchNativeMLABackend)
