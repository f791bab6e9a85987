"""Giving a request's memory back: its KV slots (to the radix tree or the allocator), its table row
and its sampler slot.

A request's table row holds its KV slots for positions [0, kv_len). Under overlap scheduling kv_len
may already include one forward that is still running (its last output token's KV and, when it
finished one step earlier, one decode slot whose token is thrown away). Only KV whose tokens are
all known is cached: `cacheable_len = min(kv_len, len(all_ids) - 1)`; the slots past it are freed.

The row and the sampler slot of a request that the running forward still reads are not freed at
once but when that forward is done (`flush`): another request must not write the row meanwhile.
KV slots are freed at once: only a later forward can write them, and forwards run in order.
"""
from __future__ import annotations

import torch

from jackfield.scheduler.req import EMPTY, Req


class KVReleaser:
    def __init__(self, runner, tree_cache, on_leave=None):
        """`on_leave(rid)` is told of every request whose KV is given back (the speculative decoder
        drops its per-request state)."""
        self.runner = runner
        self.tree_cache = tree_cache
        self.on_leave = on_leave
        self._deferred_rows: list[int] = []

    def _free_past(self, r: Req, start: int) -> None:
        """Free r's own slots for positions [start rounded up to a page, kv_len): whole pages past
        the last page the tree or the caller handles."""
        page = self.runner.page_size
        first = -(-start // page) * page
        if first < r.kv_len:
            row = self.runner.req_to_token_pool.req_to_token[r.req_pool_idx, first:r.kv_len]
            self.runner.allocator.free(row.to(torch.int64))

    def release(self, r: Req, busy_rows: frozenset[int]) -> None:
        """A finished or aborted request: cache its computed KV in the tree, free the rest, unlock."""
        keep = max(min(r.kv_len, len(r.origin_input_ids) + len(r.output_ids) - 1), 0)
        keep = max(keep, r.cache_protected_len)
        self._free_past(r, keep)
        self.tree_cache.cache_finished_req(r, keep)
        self._give_back_row(r, busy_rows)

    def park(self, r: Req) -> None:
        """A request leaves the running batch to come back through the waiting queue (jump-forward):
        its computed KV goes to the tree, where its re-admission finds it; nothing reads its row."""
        self.release(r, frozenset())
        r.kv_len, r.last_node, r.cache_protected_len, r.prefix_indices = 0, None, 0, EMPTY

    def drop(self, r: Req, busy_rows: frozenset[int]) -> None:
        """Free every slot the request owns without caching any (retraction, failed forwards)."""
        self.tree_cache.release_req(r, r.kv_len)
        self._give_back_row(r, busy_rows)
        r.kv_len, r.last_node, r.cache_protected_len, r.prefix_indices = 0, None, 0, EMPTY

    def _give_back_row(self, r: Req, busy_rows: frozenset[int]) -> None:
        if self.on_leave is not None:
            self.on_leave(r.rid)
        if r.req_pool_idx in busy_rows:
            self._deferred_rows.append(r.req_pool_idx)
        else:
            self._free_row(r.req_pool_idx)
        r.req_pool_idx = None

    def _free_row(self, row: int) -> None:
        self.runner.sampler.release_request(row)
        self.runner.req_to_token_pool.free(row)

    def flush(self) -> None:
        """Free the rows held back for a forward that has finished."""
        rows, self._deferred_rows = self._deferred_rows, []
        for row in rows:
            self._free_row(row)
