"""The `fa3` attention backend: FlashAttention-3 (Hopper) kernels over the paged KV pool.

With the full FlashAttention-3 build (`flash_attn_interface`, from flash-attention/hopper) both
extend and decode call `flash_attn_with_kvcache` on the pool viewed as
`[num_pages + 1, page_size, kv_heads, head_dim]` with a page table gathered from `req_to_token`
(FA3 takes any page size), causal masks aligned bottom-right, so new tokens see their prefix.

The `fa3-fwd` wheel (`fa3_fwd_interface`) is built without paged KV, local attention and float16
kernels. With it, every forward gathers each request's K/V from the pool into contiguous tensors
and calls `flash_attn_varlen_func`; bfloat16 only and no sliding window (see `incompatibilities`).

Not CUDA-graph capable: choose it explicitly (`attention_backend = "fa3"`) for FA3 prefill speed.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jackfield.sdk import (
    AttentionBackend, AttentionLayerInfo, AttentionRuntime, Availability, Capabilities, ForwardBatch,
    SelectionContext, hookimpl,
)
from jackfield.sdk.component import cuda_available

FULL, FWD_ONLY = "flash_attn_interface", "fa3_fwd_interface"


def installed_interface() -> str | None:
    """Import name of the FlashAttention-3 interface found here (the full build preferred), or None."""
    for name in (FULL, FWD_ONLY):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


@dataclass
class _Meta:
    cache_seqlens: torch.Tensor       # [bs] int32
    cu_seqlens_q: torch.Tensor        # [bs + 1] int32
    max_seqlen_q: int
    page_table: torch.Tensor | None   # [bs, pages] int32 (paged mode)
    kv_indices: torch.Tensor | None   # [total keys] int64 (gather mode)
    cu_seqlens_k: torch.Tensor | None  # [bs + 1] int32 (gather mode)
    max_seqlen_k: int


class FA3AttnBackend(AttentionBackend):
    """FlashAttention-3 prefill and decode; paged through `flash_attn_with_kvcache` when built with it."""

    name = "fa3"
    priority = 40
    description = "FlashAttention-3 (Hopper) varlen/paged kernels"
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16"),
                                features=frozenset({"paged", "sliding_window", "logit_cap", "mixed"}),
                                min_compute_capability=(9, 0))
    no_verify_reason = ("FlashAttention-3's kernels take causal and local (window) masks only, not an arbitrary "
                        "per-token mask such as a draft tree's")
    supported_head_dims = tuple(range(8, 257, 8))  # FA3: head_dim a multiple of 8, at most 256

    @classmethod
    def availability(cls) -> Availability:
        if installed_interface() is None:
            return Availability.no("flash_attn_interface is not installed (FlashAttention-3 from "
                                   "flash-attention/hopper, or the fa3-fwd wheel)",
                                   fix="on a Hopper GPU (compute capability 9.0): pip install fa3-fwd, or build "
                                       "flash-attention's hopper/ directory (python setup.py install)")
        if not cuda_available():
            return Availability.no("needs a CUDA device and none is visible")
        cc = torch.cuda.get_device_capability()
        if cc < (9, 0):
            return Availability.no(f"needs compute capability 9.0 (Hopper); this GPU is {cc[0]}.{cc[1]}")
        return Availability.yes(f"using {installed_interface()}")

    @classmethod
    def incompatibilities(cls, ctx: SelectionContext) -> list[str]:
        reasons = super().incompatibilities(ctx)
        if installed_interface() == FWD_ONLY:
            if ctx.dtype == "float16":
                reasons.append("the fa3-fwd build has no float16 kernels")
            if "sliding_window" in ctx.required_features:
                reasons.append("the fa3-fwd build has no sliding-window (local) attention")
        return reasons

    def __init__(self, runtime: AttentionRuntime):
        super().__init__(runtime)
        interface = installed_interface()
        if interface is None:
            raise ImportError("flash_attn_interface is not installed")
        self.paged = interface == FULL
        if not self.paged and runtime.dtype != torch.bfloat16:
            raise ValueError(f"the fa3-fwd build runs bfloat16 only, not {runtime.dtype}")
        self.fa3 = importlib.import_module(interface)
        self.meta: _Meta | None = None

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        bs, dev, ps = fb.batch_size, fb.seq_lens.device, self.runtime.page_size
        seq_lens = list(fb.seq_lens_cpu) if fb.seq_lens_cpu else None
        max_k = max(seq_lens) if seq_lens else self.runtime.max_context_len
        if fb.mode.is_decode():
            cu_q, max_q = torch.arange(bs + 1, dtype=torch.int32, device=dev), 1
        else:
            lens = fb.extend_seq_lens_cpu
            max_q = max(lens) if lens else fb.num_tokens
            cu_q = F.pad(fb.extend_seq_lens.cumsum(0, dtype=torch.int32), (1, 0))
        cache_seqlens = fb.seq_lens.to(torch.int32)
        if self.paged:
            cols = torch.arange(0, max_k, ps, device=dev)
            table = (fb.req_to_token[fb.req_pool_indices[:, None], cols[None, :]] // ps).to(torch.int32)
            self.meta = _Meta(cache_seqlens, cu_q, max_q, table.contiguous(), None, None, max_k)
            return
        seq_lens = seq_lens or fb.seq_lens.tolist()
        total, max_k = sum(seq_lens), max(seq_lens)
        counts = torch.tensor(seq_lens, dtype=torch.int64).to(dev, non_blocking=True)
        req = torch.repeat_interleave(torch.arange(bs, device=dev), counts, output_size=total)
        pos = torch.arange(total, device=dev) - (counts.cumsum(0) - counts)[req]
        kv_indices = fb.req_to_token[fb.req_pool_indices[req], pos].long()
        cu_k = F.pad(counts.cumsum(0).to(torch.int32), (1, 0))
        self.meta = _Meta(cache_seqlens, cu_q, max_q, None, kv_indices, cu_k, max_k)

    def _attend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch, decode: bool) -> torch.Tensor:
        meta = self.meta
        if meta is None:
            raise RuntimeError("fa3 backend: init_forward_metadata was not called for this batch")
        k_buf, v_buf = fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id)
        q3 = q.reshape(-1, layer.num_heads, layer.head_dim).contiguous()  # q may be a row-strided qkv view
        window = (layer.sliding_window - 1, 0) if layer.sliding_window is not None else (-1, -1)
        kw = dict(softmax_scale=layer.scaling, causal=True, window_size=window, softcap=layer.logit_cap)
        if self.paged:
            ps = self.runtime.page_size
            k_cache, v_cache = (b.view(-1, ps, *b.shape[1:]) for b in (k_buf, v_buf))
            if decode:
                out = self.fa3.flash_attn_with_kvcache(
                    q3.unsqueeze(1), k_cache, v_cache, cache_seqlens=meta.cache_seqlens,
                    page_table=meta.page_table, **kw)
            else:
                out = self.fa3.flash_attn_with_kvcache(
                    q3, k_cache, v_cache, cache_seqlens=meta.cache_seqlens, page_table=meta.page_table,
                    cu_seqlens_q=meta.cu_seqlens_q, max_seqlen_q=meta.max_seqlen_q, **kw)
        else:
            if layer.sliding_window is not None:
                raise NotImplementedError("the fa3-fwd build has no sliding-window (local) attention")
            out = self.fa3.flash_attn_varlen_func(
                q3, k_buf[meta.kv_indices], v_buf[meta.kv_indices], meta.cu_seqlens_q, meta.cu_seqlens_k,
                meta.max_seqlen_q, meta.max_seqlen_k, **kw)
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(q.shape[0], -1)

    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._attend(q, layer, fb, decode=True)

    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._attend(q, layer, fb, decode=False)


@hookimpl
def jackfield_register_attention_backends(register):
    register(FA3AttnBackend)
