"""The paged KV pool: preallocated tensors per layer, indexed by token slot, in the model's KV layout.

A `KVLayout` says what one token stores per layer. The model declares it (`CausalLM.kv_layout`)
and attention backends declare the layout kind they read (`AttentionBackend.kv_layout_kind`), so
the runner builds the pool the model asks for and selection pairs it with a backend that reads it:
- "per_head": a K and a V buffer, each `[slots, num_kv_heads, head_dim]`;
- "latent": one buffer `[slots, num_kv_heads, k_dim]` whose first `v_dim` columns are also the
  values (`v_buffer` is a view); K and V are never stored twice (DeepSeek's MLA latent).
Page 0 (slots 0..page_size-1) is never handed out: padded rows of CUDA-graph batches write there
harmlessly. Which slots are free is the allocator's business (jackfield.mem.allocator), not the pool's.

An FP8 pool (`dtype` torch.float8_e4m3fn, `--kv-cache-dtype fp8_e4m3`) stores K / k_scale and
V / v_scale, saturated to the format's range, one byte per value: twice the tokens of a 16-bit
pool in the same memory. The per-layer scales (`set_scales`) come from the checkpoint (its
`k_scale` / `v_scale` tensors) or are 1.0. A reader multiplies by them (`dequantize`); attention
backends that read an FP8 pool declare the `fp8_kv_cache` feature (no latent backend does).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from jackfield.kernels import fused_available

FP8_DTYPES = (torch.float8_e4m3fn,)
KV_CACHE_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn}
"""`--kv-cache-dtype` values other than auto (the compute dtype) and the storage dtype they mean."""
# checkpoint names of per-layer KV-cache scales (SGLang/vLLM, ModelOpt, compressed-tensors, older
# AutoFP8 `kv_scale`) -> which scale; q_scale / prob_scale are attention-input scales nothing uses
_KV_SCALE = re.compile(r"^(?P<attn>.*\.self_attn)\.(?:attn\.|[a-z]+_proj\.)?"
                       r"(?P<which>k_scale|v_scale|kv_scale|q_scale|prob_scale|output_scale)$")


def kv_scale_target(name: str) -> tuple[str, str | None] | None:
    """For a checkpoint tensor holding a KV-cache scale: (attention module prefix, "k" | "v" |
    "kv" | None for a scale nothing reads). None for any other tensor."""
    m = _KV_SCALE.match(name)
    if m is None:
        return None
    which = m["which"]
    if which == "output_scale":  # compressed-tensors: k_proj.output_scale / v_proj.output_scale
        proj = name.rsplit(".", 2)[-2]
        return m["attn"], {"k_proj": "k", "v_proj": "v"}.get(proj)
    return m["attn"], {"k_scale": "k", "v_scale": "v", "kv_scale": "kv"}.get(which)


@dataclass(frozen=True)
class KVLayout:
    """Per token and layer: K of [num_kv_heads, k_dim]; V of [num_kv_heads, v_dim], stored in its own
    buffer, or (`v_in_k`) read from K's first v_dim columns."""

    num_kv_heads: int
    k_dim: int
    v_dim: int
    v_in_k: bool = False

    @classmethod
    def per_head(cls, num_kv_heads: int, head_dim: int) -> "KVLayout":
        return cls(num_kv_heads, head_dim, head_dim)

    @classmethod
    def latent(cls, dim: int, v_dim: int) -> "KVLayout":
        """One shared vector of `dim` per token, its first `v_dim` entries the values."""
        return cls(1, dim, v_dim, v_in_k=True)

    @property
    def kind(self) -> str:
        return "latent" if self.v_in_k else "per_head"

    def bytes_per_token(self, num_layers: int, dtype: torch.dtype) -> int:
        width = self.k_dim + (0 if self.v_in_k else self.v_dim)
        return num_layers * self.num_kv_heads * width * torch.empty((), dtype=dtype).element_size()


class KVPool:
    def __init__(self, num_pages: int, page_size: int, num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str, layout: KVLayout | None = None):
        """`layout` defaults to per-head K and V of [num_kv_heads, head_dim]; when given, it wins."""
        layout = layout or KVLayout.per_head(num_kv_heads, head_dim)
        self.layout = layout
        self.num_pages, self.page_size = num_pages, page_size
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, layout.num_kv_heads, layout.k_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.quantized = dtype in FP8_DTYPES
        self.k_scales = [1.0] * num_layers
        self.v_scales = [1.0] * num_layers
        rows = (num_pages + 1) * page_size
        self.k_buffers = [torch.zeros(rows, layout.num_kv_heads, layout.k_dim, dtype=dtype, device=device)
                          for _ in range(num_layers)]
        if layout.v_in_k:
            self.v_buffers = [k[..., :layout.v_dim] for k in self.k_buffers]
        else:
            self.v_buffers = [torch.zeros(rows, layout.num_kv_heads, layout.v_dim, dtype=dtype, device=device)
                              for _ in range(num_layers)]
        self._store_kv = None
        if num_layers and not layout.v_in_k and fused_available(self.k_buffers[0]):
            from jackfield.kernels.kv_store import store_kv

            self._store_kv = store_kv

    @property
    def num_slots(self) -> int:
        """Usable token slots (the reserved page excluded)."""
        return self.num_pages * self.page_size

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return KVLayout.per_head(num_kv_heads, head_dim).bytes_per_token(num_layers, dtype)

    def set_scales(self, layer_id: int, k_scale: float, v_scale: float) -> None:
        """The scales K and V of `layer_id` are stored divided by (FP8 pools; set before any write)."""
        if not (k_scale > 0 and v_scale > 0):
            raise ValueError(f"layer {layer_id}: KV cache scales must be positive, got k={k_scale}, v={v_scale}")
        self.k_scales[layer_id], self.v_scales[layer_id] = float(k_scale), float(v_scale)

    def k_buffer(self, layer_id: int) -> torch.Tensor:
        return self.k_buffers[layer_id]

    def v_buffer(self, layer_id: int) -> torch.Tensor:
        return self.v_buffers[layer_id]

    def dequantize(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows read from this pool (any gathered shape) as float32 values."""
        if not self.quantized:
            return k.float(), v.float()
        return k.float() * self.k_scales[layer_id], v.float() * self.v_scales[layer_id]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None) -> None:
        """Write K/V of shape [n, num_kv_heads, dim] (or [n, kv_heads*dim]) to slots `loc`; with a
        layout whose V lives in K, `v` is None. On CUDA one Triton kernel writes both K and V
        (jackfield.kernels.kv_store)."""
        if self.layout.v_in_k:
            if self.quantized:
                raise ValueError("an FP8 KV cache of the latent layout is not supported")
            self.k_buffers[layer_id][loc] = k.view(-1, self.num_kv_heads, self.head_dim).to(self.dtype)
            return
        ks, vs = self.k_scales[layer_id], self.v_scales[layer_id]
        if self._store_kv is not None and k.dim() == 2 and k.stride(1) == 1 and v.stride(1) == 1:
            self._store_kv(self.k_buffers[layer_id], self.v_buffers[layer_id], loc, k, v, 1.0 / ks, 1.0 / vs)
            return
        shape, v_shape = (-1, self.num_kv_heads, self.head_dim), (-1, self.num_kv_heads, self.layout.v_dim)
        if self.quantized:  # through uint8 views: index_put has no float8 kernel on every device
            bound = torch.finfo(self.dtype).max
            kq = (k.float() / ks).clamp(-bound, bound).to(self.dtype).view(shape)
            vq = (v.float() / vs).clamp(-bound, bound).to(self.dtype).view(v_shape)
            self.k_buffers[layer_id].view(torch.uint8)[loc] = kq.view(torch.uint8)
            self.v_buffers[layer_id].view(torch.uint8)[loc] = vq.view(torch.uint8)
            return
        self.k_buffers[layer_id][loc] = k.view(shape).to(self.dtype)
        self.v_buffers[layer_id][loc] = v.view(v_shape).to(self.dtype)
