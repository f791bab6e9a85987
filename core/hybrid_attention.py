"""One attention backend for prefill and another for decode (`prefill_attention_backend`,
`decode_attention_backend`; SGLang's --prefill/--decode-attention-backend).

Each backend has its strong mode: on the H100, FlashInfer's sm90 prefill kernel runs a 16K-token
chunk of the 8B model's attention in 10.8 ms against 15.6 for the Triton extend kernel, while the
Triton decode kernel reads a batch-256 step's KV 9% faster than FlashInfer's (on the offline
benchmark the pair measured flat against Triton alone: docs/benchmarks.md). `HybridAttnBackend`
routes every call by the batch's mode: extend, mixed and speculative-verify forwards (and their metadata) go to the
prefill backend, decode forwards, CUDA-graph capture and replay to the decode backend. Both read and
write the same KV pool, so both must keep K/V as the pool stores them (`kv_stored_by_pool`).
"""
from __future__ import annotations

import torch

from jackfield.sdk.attention import AttentionBackend, AttentionLayerInfo, AttentionRuntime
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.selection import ATTENTION_MODES, SelectionError


class HybridAttnBackend(AttentionBackend):
    name = "hybrid"

    def __init__(self, prefill: AttentionBackend, decode: AttentionBackend):
        super().__init__(decode.runtime)
        for b in (prefill, decode):
            if not b.kv_stored_by_pool:
                raise SelectionError(f"attention backend '{b.name}' keeps K/V in its own layout; it cannot share "
                                     "the KV pool with another backend (set one attention backend for both modes)")
        self.prefill, self.decode = prefill, decode
        self.supports_cuda_graph = decode.supports_cuda_graph  # decode graphs; verify graphs use the prefill backend
        self.supports_mixed = prefill.supports_mixed  # a mixed forward runs on the prefill backend
        self.supports_ragged_prefill = prefill.supports_ragged_prefill  # an extend (MLA's expanded prefill)

    def _for(self, fb: ForwardBatch) -> AttentionBackend:
        return self.decode if fb.mode.is_decode() else self.prefill

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        self._for(fb).init_forward_metadata(fb)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo,
                fb: ForwardBatch, save_kv: bool = True) -> torch.Tensor:
        return self._for(fb).forward(q, k, v, layer, fb, save_kv)

    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self.prefill.forward_extend(q, layer, fb)

    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self.decode.forward_decode(q, layer, fb)

    def forward_ragged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo,
                       fb: ForwardBatch) -> torch.Tensor:
        return self.prefill.forward_ragged(q, k, v, layer, fb)

    def forward_verify(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self.prefill.forward_verify(q, layer, fb)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.decode.init_cuda_graph_state(max_bs, max_num_tokens)
        if self.prefill.supports_cuda_graph:  # speculative verify graphs run on the prefill backend
            self.prefill.init_cuda_graph_state(max_bs, max_num_tokens)

    def init_forward_metadata_capture(self, fb: ForwardBatch) -> None:
        self._for(fb).init_forward_metadata_capture(fb)

    def init_forward_metadata_replay(self, fb: ForwardBatch) -> None:
        self._for(fb).init_forward_metadata_replay(fb)

    def cuda_graph_seq_len_fill_value(self) -> int:
        return self.decode.cuda_graph_seq_len_fill_value()


def build_attention_backend(choices: dict, runtime: AttentionRuntime) -> AttentionBackend:
    """The engine's attention backend: `attention`, or a HybridAttnBackend where the per-mode choices
    (`prefill_attention`, `decode_attention`) name different components."""
    default = choices["attention"]
    prefill, decode = (choices.get(key) or default for key in ATTENTION_MODES)
    for c in (prefill, decode):
        if c.info is None:
            raise SelectionError(f"{c.kind} cannot be '{c.requested}': every forward needs an attention backend")
    if prefill.info is decode.info:
        return prefill.info.cls(runtime)
    return HybridAttnBackend(prefill.info.cls(runtime), decode.info.cls(runtime))
