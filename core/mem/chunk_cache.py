"""ChunkCache: the RadixCache interface with prefix caching disabled.

Nothing is ever shared: match_prefix finds nothing, insert stores nothing, and every slot a request
allocates is freed when it finishes or is retracted. cache_unfinished_req only records the slots
computed so far in `req.prefix_indices` so a chunked prefill can continue from them.
"""
from __future__ import annotations

import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.radix_cache import MatchResult, TreeNode
from jackfield.mem.req_to_token import ReqToTokenPool


class ChunkCache:
    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: TokenAllocator, page_size: int):
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        self.page_size = page_size
        self.device = allocator.device
        self.root_node = TreeNode(value=torch.empty(0, dtype=torch.int64, device=self.device))
        self.root_node.lock_ref = 1

    def reset(self) -> None:
        """Nothing is cached, so there is nothing to drop."""

    def match_prefix(self, token_ids: list[int], namespace=None) -> MatchResult:
        """Always an empty match ending at the root sentinel."""
        return MatchResult(indices=torch.empty(0, dtype=torch.int64, device=self.device), last_node=self.root_node)

    def insert(self, token_ids: list[int], slots: torch.Tensor, namespace=None) -> int:
        """Stores nothing; returns 0 (the caller keeps ownership of every slot)."""
        return 0

    def inc_lock_ref(self, node) -> None:
        """No tree, so no locks: a no-op."""

    def dec_lock_ref(self, node) -> None:
        """No tree, so no locks: a no-op."""

    def evict(self, num_tokens: int) -> int:
        return 0

    def drop_namespace(self, namespace) -> int:
        """Nothing is cached in any namespace: a no-op."""
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def total_size(self) -> int:
        return 0

    def all_values(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)

    def _row(self, req, start: int, end: int) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token[req.req_pool_idx, start:end].to(device=self.device, dtype=torch.int64)

    def cache_finished_req(self, req, kv_len: int) -> None:
        """Free the request's slots [0, kv_len)."""
        self.allocator.free(self._row(req, 0, kv_len))

    def cache_unfinished_req(self, req, kv_len: int) -> None:
        """Record slots [0, kv_len) as the request's prefix; ownership stays with the request."""
        req.prefix_indices = self._row(req, 0, kv_len)
        req.last_node = self.root_node

    def release_req(self, req, kv_len: int) -> None:
        """Retract: free the request's slots [0, kv_len)."""
        self.allocator.free(self._row(req, 0, kv_len))

    def pretty_print(self) -> str:
        return "<ChunkCache: empty>"
