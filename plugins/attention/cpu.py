"""cpu: torch_native with a C++ decode kernel that reads keys and values straight from the pool.

A CPU decode step at batch 1 is bound by reading the KV cache, and torch_native's decode reads it
three times: the gather (index_select) reads the request's rows and writes a copy, and SDPA reads
the copy. `jackfield.sdk.cpu_decode_attention` walks each request's slots once per KV head, for
all the query heads of its group, instead (SmolLM2, 2 cores, ~200 tokens of context: 30 layers of
decode attention in ~1.0 ms against ~1.9 ms). Extend and verify forwards, FP8 or non-float32 pools and other query dtypes take
torch_native's path unchanged. The operator is compiled on first use (~30 s, once per installation),
so the backend needs a C++ compiler and reports itself unavailable without one.
"""
from __future__ import annotations

import torch

from jackfield.sdk import (Availability, AttentionLayerInfo, Capabilities, ForwardBatch, cpu_attention_unavailable,
                           cpu_decode_attention, hookimpl)
from jackfield_plugins.attention.torch_native import TorchNativeBackend


class CpuBackend(TorchNativeBackend):
    name = "cpu"
    priority = 20
    capabilities = Capabilities(devices=("cpu",), features=TorchNativeBackend.capabilities.features)
    description = "torch_native with a C++ decode kernel over the paged pool (CPU)"
    decode_lens: torch.Tensor | None = None  # int64 [B], set per decode forward

    @classmethod
    def availability(cls) -> Availability:
        reason = cpu_attention_unavailable()
        return Availability.no(reason) if reason else super().availability()

    def __init__(self, runtime):
        super().__init__(runtime)
        # compiled (first run only) while the model loads, not in the first request; the operator
        # itself is kept, so torch.compile traces a plain op call
        self.decode_op = cpu_decode_attention.build().decode

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        super().init_forward_metadata(fb)
        self.decode_lens = fb.seq_lens.long() if self.decode_slots is not None else None

    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        k_buf, v_buf = fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id)
        if (self.decode_slots is None or q.dtype != torch.float32 or k_buf.dtype != torch.float32
                or v_buf.dtype != torch.float32):
            return super().forward_decode(q, layer, fb)
        bs = q.shape[0]
        qh = q.reshape(bs, layer.num_heads, layer.head_dim).contiguous()
        o = self.decode_op(qh, k_buf, v_buf, self.decode_slots.view(bs, -1), self.decode_lens,
                           layer.scaling, layer.sliding_window or 0, max(layer.logit_cap, 0.0))
        return o.view(bs, layer.num_heads * layer.v_dim)


@hookimpl
def jackfield_register_attention_backends(register):
    register(CpuBackend)
