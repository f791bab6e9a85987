"""CacheAwareRouter: which data-parallel replica serves a request (SGLang's cache-aware policy).

Per request, with `loads[i]` the requests in flight on replica i (counted here: +1 when routed,
-1 when finished or aborted) and one ApproxTree per replica of the prompts sent to it:

1. Imbalanced (max load - min load > `balance_abs_threshold` and max load > `balance_rel_threshold`
   x min load): the least loaded replica, whatever it caches ("load_balance").
2. Otherwise the replica whose tree holds the longest prefix of the prompt, when that prefix is more
   than `cache_threshold` of the prompt ("cache_hit"): its radix cache most likely still holds the
   prefix's KV, so the prefill skips it.
3. Otherwise the least loaded replica ("load_balance"); ties go to the replica whose tree holds
   less (it has the most room for a new prefix), then to the lowest index.

The chosen replica's tree then records the prompt (and, through `remember`, the prompt with its
output once the request leaves). Unlike SGLang's router, which falls back to the
replica with the smallest tree, step 3 takes the least loaded one first: a replica in the middle of
a long batch should not get the next new prompt because it had cached less.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jackfield.router.approx_tree import ApproxTree

CACHE_HIT, LOAD_BALANCE, PINNED = "cache_hit", "load_balance", "pinned"
REASONS = (CACHE_HIT, LOAD_BALANCE, PINNED)


@dataclass(frozen=True)
class RouterConfig:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_tree_tokens: tuple[int, ...] = (1 << 20,)  # one per replica

    @classmethod
    def from_settings(cls, settings, pool_tokens: Sequence[int]) -> RouterConfig:
        """The router settings; each replica's tree holds `router_max_tree_tokens`, or as many
        tokens as that replica's KV pool (`pool_tokens[i]`) when unset."""
        cap = settings.router_max_tree_tokens
        return cls(settings.router_cache_threshold, settings.router_balance_abs_threshold,
                   settings.router_balance_rel_threshold, tuple(cap or n for n in pool_tokens))


@dataclass(frozen=True)
class Route:
    replica: int
    reason: str   # CACHE_HIT, LOAD_BALANCE, or PINNED (the caller chose the replica)
    matched: int  # prompt tokens the chosen replica's tree held before this request


def route_key(input_ids: Sequence[int], lora: str | None = None) -> tuple:
    """What the trees are keyed by: the prompt's token ids, after the LoRA adapter's name when
    there is one (an adapter's prompts share no cache with the base model's or another adapter's)."""
    return tuple(input_ids) if lora is None else (("lora", lora), *input_ids)


class CacheAwareRouter:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.trees = [ApproxTree(n) for n in config.max_tree_tokens]
        self.loads = [0] * len(self.trees)

    @property
    def num_replicas(self) -> int:
        return len(self.trees)

    def route(self, key: Sequence, replica: int | None = None) -> Route:
        """Pick the replica for a request keyed `key` (route_key), or take `replica` when given, and
        count the request in flight there."""
        if replica is not None:
            reason, matched = PINNED, self.trees[replica].match(key)
        elif self.imbalanced():
            replica, reason = self.least_loaded(), LOAD_BALANCE
            matched = self.trees[replica].match(key)
        else:
            matches = [tree.match(key) for tree in self.trees]
            best = max(range(self.num_replicas), key=lambda i: (matches[i], -self.loads[i], -i))
            if key and matches[best] / len(key) > self.config.cache_threshold:
                replica, reason = best, CACHE_HIT
            else:
                replica, reason = self.least_loaded(), LOAD_BALANCE
            matched = matches[replica]
        self.trees[replica].insert(key)
        self.loads[replica] += 1
        return Route(replica, reason, matched)

    def imbalanced(self) -> bool:
        low, high = min(self.loads), max(self.loads)
        c = self.config
        return high - low > c.balance_abs_threshold and high > c.balance_rel_threshold * low

    def least_loaded(self) -> int:
        return min(range(self.num_replicas), key=lambda i: (self.loads[i], self.trees[i].size, i))

    def release(self, replica: int) -> None:
        """A request routed to `replica` finished or was aborted."""
        self.loads[replica] = max(0, self.loads[replica] - 1)

    def remember(self, replica: int, key: Sequence) -> None:
        """`replica` now caches `key` (a finished request's prompt and output)."""
        self.trees[replica].insert(key)

    def forget(self, replica: int) -> None:
        """`replica` flushed its prefix cache."""
        self.trees[replica].clear()
