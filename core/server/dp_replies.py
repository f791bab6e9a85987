"""ReplyGather: one answer from the N replicas' answers to a control request sent to all of them.

A data-parallel server sends every control request (stats, cache flush, LoRA load / unload) to
each replica. Each replica answers requests of one kind in order, so the k-th reply of a kind from
every replica belongs to the k-th request of that kind: replies wait, per kind (`reply_key`) and per
replica, until every replica has one; then they are combined into the single reply the tokenizer
manager's waiter expects. A ControlFailed from any replica fails the request; a LoRA update is ok
only where every replica's is.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import fields

from jackfield.io_struct import FlushCacheOut, LoRAUpdateOut, StatsOut
from jackfield.server.messages import ControlFailed

_RATES = ("cache_hit_rate",)


def combine_stats(stats: list[StatsOut]) -> StatsOut:
    """The server-wide StatsOut: counts and throughputs summed, the cache hit rate over all prompts."""
    total = {f.name: sum(getattr(s, f.name) for s in stats) for f in fields(StatsOut) if f.name not in _RATES}
    prompt = total["total_prompt_tokens"]
    return StatsOut(**total, cache_hit_rate=total["total_cached_tokens"] / prompt if prompt else 0.0)


def combine(replies: list):
    """One reply from every replica's reply (index = replica) to the same control request."""
    failed = next((r for r in replies if isinstance(r, ControlFailed)), None)
    if failed is not None:
        return failed
    first = replies[0]
    if isinstance(first, StatsOut):
        return combine_stats(replies)
    if isinstance(first, FlushCacheOut):
        refused = [f"replica {i}: {r.message}" for i, r in enumerate(replies) if not r.ok]
        return FlushCacheOut(not refused, "; ".join(refused) or first.message)
    if isinstance(first, LoRAUpdateOut):
        return next((r for r in replies if not r.ok), first)
    return first


class ReplyGather:
    def __init__(self, num_replicas: int, key):
        self.num_replicas = num_replicas
        self._key = key  # reply -> the kind it answers (tokenizer_manager.reply_key)
        self._pending: dict[str, list[deque]] = defaultdict(lambda: [deque() for _ in range(num_replicas)])

    def add(self, replica: int, reply) -> list | None:
        """Record `replica`'s reply; returns every replica's reply (index = replica) to the request
        once the last one is in, else None."""
        key = self._key(reply)
        queues = self._pending[key]
        queues[replica].append(reply)
        if not all(queues):
            return None
        replies = [q.popleft() for q in queues]
        if not any(queues):
            del self._pending[key]
        return replies

    def clear(self) -> None:
        self._pending.clear()
