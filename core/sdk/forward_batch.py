"""ForwardBatch: the one batch descriptor that flows from the scheduler to the model and backend.

Token-level tensors have one row per token computed in this forward (`num_tokens`); request-level
tensors one row per request (`batch_size`). In EXTEND/MIXED mode a request contributes
`extend_seq_lens[i]` new tokens on top of `extend_prefix_lens[i]` tokens already in the KV cache;
in DECODE mode every request contributes exactly one token. `seq_lens[i]` is always the request's
KV length *after* this forward (prefix + new tokens). TARGET_VERIFY (speculative decoding) is laid
out like EXTEND, but the new tokens of request i are a draft tree rather than a sequence: token q
attends to the request's whole cached prefix and, among the new tokens, only to those that
`tree_mask` marks visible from q (its ancestors and itself). KV slot indices are token-granular even when
the page size is > 1: `req_to_token[req_pool_indices[i], j]` is the slot of token j of request i,
and slot // page_size is its page.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from jackfield.sdk.attention import AttentionBackend
    from jackfield.sdk.kv_cache import KVPool


class ForwardMode(IntEnum):
    EXTEND = 1  # prefill (possibly a chunk, possibly over a cached prefix)
    DECODE = 2  # one new token per request
    MIXED = 3   # prefill chunks and decodes in one forward; decodes are length-1 extends
    IDLE = 4    # nothing to run
    TARGET_VERIFY = 5  # speculative decoding: each request's draft tree, under a tree attention mask

    def is_extend(self) -> bool:
        """Prefill-like forwards whose new tokens attend causally (verify is not one of them)."""
        return self in (ForwardMode.EXTEND, ForwardMode.MIXED)

    def is_decode(self) -> bool:
        return self == ForwardMode.DECODE

    def is_verify(self) -> bool:
        return self == ForwardMode.TARGET_VERIFY


@dataclass(frozen=True)
class ForwardBatch:
    mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor         # [num_tokens] int64
    positions: torch.Tensor         # [num_tokens] int64, position of each token in its sequence
    req_pool_indices: torch.Tensor  # [bs] int64, row of each request in req_to_token
    seq_lens: torch.Tensor          # [bs] int32, KV length after this forward
    out_cache_loc: torch.Tensor     # [num_tokens] int64, KV slot each new token's K/V is written to
    req_to_token: torch.Tensor      # [max_reqs, max_context_len] int32, the request-to-token table
    kv_pool: "KVPool"
    attn_backend: "AttentionBackend"
    seq_lens_cpu: tuple[int, ...] = ()
    # extend / mixed only
    extend_prefix_lens: torch.Tensor | None = None  # [bs] int32, tokens already cached
    extend_seq_lens: torch.Tensor | None = None     # [bs] int32, new tokens this forward
    extend_start_loc: torch.Tensor | None = None    # [bs] int32, offset of request i's first new token
    extend_prefix_lens_cpu: tuple[int, ...] = ()
    extend_seq_lens_cpu: tuple[int, ...] = ()
    # target-verify only: request i's n_i new tokens see each other through the [n_i, n_i] bool
    # matrix tree_mask[tree_mask_indptr[i]:tree_mask_indptr[i + 1]].view(n_i, n_i), row = query,
    # column = key (True: an ancestor of the query in the draft tree, or the query itself). The
    # first new token is the tree's root; positions are the prefix length + the node's depth.
    tree_mask: torch.Tensor | None = None           # [sum n_i^2] bool
    tree_mask_indptr: torch.Tensor | None = None    # [bs + 1] int64
    # which rows of the hidden states become logits: last token of each request by default
    logits_indices: torch.Tensor | None = None      # [num_logit_rows] int64
    sampling: Any = None                            # SamplingBatch of the requests, for the sampler
    lora_slots: tuple[int, ...] = ()                # LoRA on: adapter pool slot per request (-1: base model)
    extras: dict = field(default_factory=dict)      # plugin data (LoRA ids, spec-verify info, …)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
