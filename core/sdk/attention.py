"""Attention backends: the interface every attention plugin implements.

Life of a backend:
  1. constructed once per engine with an AttentionRuntime (geometry, KV pool, request table);
  2. per batch, `init_forward_metadata(fb)` once, before the model's forward (index tensors,
     planning; this is where FlashInfer "plans" and Triton builds kv_indptr/kv_indices);
  3. per layer, `forward(q, k, v, layer, fb)`: store the new K/V into the pool at
     `fb.out_cache_loc`, then attend. q is [num_tokens, num_heads*head_dim], k/v are
     [num_tokens, num_kv_heads*head_dim]; return [num_tokens, num_heads*v_head_dim].

KV layout: a backend reads the pool in one layout kind (`kv_layout_kind`, see
jackfield.sdk.kv_cache.KVLayout) and selection only pairs it with models that store that kind.
A "latent" backend (MLA) is called with k = the latent [num_tokens, k_dim] and v = None: it stores
k alone and reads the values as the first `v_head_dim` columns of the cached keys. Such a backend
may also set `supports_ragged_prefill` and implement `forward_ragged`: causal attention of an
extend batch's new tokens among themselves, with K/V the model expanded from the latent (the
non-absorbed form of MLA that long prefills with no cached prefix use).

Speculative decoding adds a third mode, TARGET_VERIFY: like an extend, but each request's new
tokens form a draft tree and attend under `fb.tree_mask` (jackfield.sdk.forward_batch). A backend
that implements `forward_verify` lists the feature "spec_verify" in its capabilities; selection
then matches it against engines that run a speculative decoder, and refuses the others by name
(with `no_verify_reason`, when the backend gives one). A backend that can also capture verify
forwards in CUDA graphs (from device tensors plus the host lengths the replay batch carries) lists
"cuda_graph_verify".

CUDA graphs (only when `supports_cuda_graph`): the runner calls `init_cuda_graph_state(max_bs,
max_num_tokens)` once to let the backend allocate static buffers; then, for each captured batch
size, `init_forward_metadata_capture(fb)` instead of `init_forward_metadata` while capturing, and
`init_forward_metadata_replay(fb)` before every replay (fb then holds the live batch padded to the
captured size; padded rows have req_pool_index 0 and seq_len `cuda_graph_seq_len_fill_value()`).
Metadata written during replay must go into the static buffers the captured kernels read.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from jackfield.sdk.component import Component, SelectionContext
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.kv_cache import KVPool


@dataclass(frozen=True)
class AttentionLayerInfo:
    """Static facts about one attention layer, handed to the backend on every call."""

    layer_id: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    sliding_window: int | None = None  # attend to at most this many most recent keys
    logit_cap: float = 0.0
    v_head_dim: int = 0  # width of the values and of the output per head; 0: head_dim

    @property
    def v_dim(self) -> int:
        return self.v_head_dim or self.head_dim


@dataclass(frozen=True)
class AttentionRuntime:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    page_size: int
    kv_pool: KVPool
    req_to_token: torch.Tensor
    max_batch_size: int
    max_context_len: int


class AttentionBackend(Component):
    kind: ClassVar[str] = "attention"
    supports_cuda_graph: ClassVar[bool] = False
    supports_mixed: ClassVar[bool] = True
    """Can one forward hold prefill chunks and decodes together (ForwardMode.MIXED)?"""
    kv_stored_by_pool: ClassVar[bool] = True
    """Does this backend keep K/V exactly as `KVPool.set_kv` writes them (the base `forward` does)?
    Then the model may write them itself, fused with rotary, and call `forward(..., save_kv=False)`.
    A backend that stores K/V in another layout or precision overrides `forward` and sets False."""
    kv_layout_kind: ClassVar[str] = "per_head"
    """The KVLayout kind this backend reads ("per_head" or "latent")."""
    supports_ragged_prefill: ClassVar[bool] = False
    """Implements `forward_ragged` (latent backends: the non-absorbed MLA prefill)."""
    no_verify_reason: ClassVar[str] = ""
    """Why a backend without the "spec_verify" feature cannot verify draft trees (said when selection
    refuses it for speculative decoding)."""
    supported_head_dims: ClassVar[tuple[int, ...] | None] = None
    """The K head widths this backend's kernels are built for (None: any). Selection skips the
    backend for another model's head_dim with that reason, instead of failing inside a kernel."""

    def __init__(self, runtime: AttentionRuntime):
        self.runtime = runtime

    @classmethod
    def incompatibilities(cls, ctx: SelectionContext) -> list[str]:
        reasons = super().incompatibilities(ctx)
        if ctx.kv_layout != cls.kv_layout_kind:
            reasons.append(f"reads the '{cls.kv_layout_kind}' KV layout, the model stores '{ctx.kv_layout}'")
        dims = cls.supported_head_dims
        if dims is not None and ctx.head_dim is not None and ctx.head_dim not in dims:
            reasons.append(f"head_dim {ctx.head_dim} not supported (supports {', '.join(map(str, dims))})")
        if "spec_verify" in ctx.required_features and "spec_verify" not in cls.capabilities.features:
            reasons.append("has no speculative verify mode (the draft tree's attention mask in one target forward)"
                           + (f": {cls.no_verify_reason}" if cls.no_verify_reason else ""))
        return reasons

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        """Prepare per-batch metadata; called once per forward, before the first layer."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo,
                fb: ForwardBatch, save_kv: bool = True) -> torch.Tensor:
        """Attention of `q` ([tokens, num_heads * head_dim]) over the batch's KV; returns a new tensor
        of q's shape. q has unit stride along its last dimension, but its rows may be strided: it is
        often a view of the fused qkv projection's output, and a backend whose kernel needs a dense
        q makes it contiguous itself. With `save_kv`, k and v are first written to the pool."""
        if save_kv:
            fb.kv_pool.set_kv(layer.layer_id, fb.out_cache_loc, k, v)
        if fb.mode.is_decode():
            return self.forward_decode(q, layer, fb)
        if fb.mode.is_verify():
            return self.forward_verify(q, layer, fb)
        return self.forward_extend(q, layer, fb)

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        """New tokens attend causally to their cached prefix and to each other."""

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        """One new token per request attends to the request's whole KV."""

    def forward_ragged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo,
                       fb: ForwardBatch) -> torch.Tensor:
        """Causal attention among an extend batch's new tokens only (no cached prefix, nothing read
        from or written to the pool): q, k [tokens, num_heads * head_dim], v [tokens, num_heads *
        v_dim] -> [tokens, num_heads * v_dim]. Only where `supports_ragged_prefill`."""
        raise NotImplementedError(f"attention backend '{self.name}' has no ragged prefill")

    def forward_verify(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        """Draft-tree tokens attend to their request's cached prefix and to their tree ancestors
        (`fb.tree_mask`). Only backends whose capabilities list "spec_verify" implement it."""
        raise NotImplementedError(f"attention backend '{self.name}' does not implement the speculative verify "
                                  "mode (its capabilities lack 'spec_verify')")

    # ---- CUDA graphs -----------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        """Allocate the static buffers captured graphs will read."""

    def init_forward_metadata_capture(self, fb: ForwardBatch) -> None:
        self.init_forward_metadata(fb)

    def init_forward_metadata_replay(self, fb: ForwardBatch) -> None:
        self.init_forward_metadata(fb)

    def cuda_graph_seq_len_fill_value(self) -> int:
        return 1
