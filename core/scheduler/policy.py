"""SchedulePolicy: the order in which waiting requests are considered for admission.

Policies:
- `fcfs`: by `req.arrival_seq`.
- `lpm` (longest prefix match): match every waiting request's input + output ids, minus the last
  token (at least one token must be computed, as `Req.match_prefix`), against the tree cache, store
  the result on it (`req.prefix_indices`, `req.last_node`, reusable by the scheduler), and sort by
  matched length, longest first, ties by arrival. Falls back to fcfs above 128 waiting requests.
- `dfs-weight`: match as lpm, weight each tree node by the waiting requests in its subtree, and emit
  requests in DFS order visiting heavier subtrees first, so requests sharing a prefix run together.
- `random`: a shuffle driven by `random.Random(seed)`.
With the prefix cache disabled, lpm and dfs-weight degrade to fcfs.

Priority classes come first: the policy orders the queue, then a stable sort puts requests of a
higher `req.priority` ahead (the Batch API submits at -1, below every interactive request's 0), so
within a class the policy's order holds.
"""
from __future__ import annotations

import random
from collections import defaultdict

POLICIES = ("fcfs", "lpm", "dfs-weight", "random")
LPM_FALLBACK_QUEUE_LEN = 128


class SchedulePolicy:
    def __init__(self, policy: str, tree_cache, enable_cache: bool, seed: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown schedule policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.tree_cache = tree_cache
        self.enable_cache = enable_cache
        self._rng = random.Random(seed)

    def effective_policy(self, num_waiting: int) -> str:
        """The policy actually applied to a queue of num_waiting requests."""
        if self.policy in ("lpm", "dfs-weight") and not self.enable_cache:
            return "fcfs"
        if self.policy == "lpm" and num_waiting > LPM_FALLBACK_QUEUE_LEN:
            return "fcfs"
        return self.policy

    def calc_priority(self, waiting: list) -> None:
        """Reorder `waiting` in place by the policy."""
        policy = self.effective_policy(len(waiting))
        if policy == "fcfs":
            waiting.sort(key=lambda r: r.arrival_seq)
        elif policy == "random":
            self._rng.shuffle(waiting)
        elif policy == "lpm":
            self._match_prefixes(waiting)
            waiting.sort(key=lambda r: (-len(r.prefix_indices), r.arrival_seq))
        else:
            self._match_prefixes(waiting)
            waiting[:] = self._dfs_weight_order(waiting)
        if any(r.priority != waiting[0].priority for r in waiting):
            waiting.sort(key=lambda r: -r.priority)

    def _match_prefixes(self, waiting: list) -> None:
        for req in waiting:
            ids = list(req.origin_input_ids) + list(req.output_ids)
            match = self.tree_cache.match_prefix(ids[:req.prefix_limit], getattr(req, "cache_namespace", None))
            req.prefix_indices = match.indices
            req.last_node = match.last_node

    def _dfs_weight_order(self, waiting: list) -> list:
        root = self.tree_cache.root_node
        reqs_at: dict[int, list] = defaultdict(list)
        for req in sorted(waiting, key=lambda r: r.arrival_seq):
            reqs_at[id(req.last_node)].append(req)
        weight: dict[int, int] = defaultdict(int)
        first_arrival: dict[int, int] = {}
        children: dict[int, list] = defaultdict(list)
        for req in sorted(waiting, key=lambda r: r.arrival_seq):
            node = req.last_node
            while node is not None:
                key = id(node)
                if key not in first_arrival:
                    first_arrival[key] = req.arrival_seq
                    if node is not root and node.parent is not None:
                        children[id(node.parent)].append(node)
                weight[key] += 1
                if node is root:
                    break
                node = node.parent
        order: list = []
        stack = [root]
        while stack:
            node = stack.pop()
            order.extend(reqs_at.get(id(node), ()))
            kids = sorted(children.get(id(node), ()), key=lambda n: (-weight[id(n)], first_arrival[id(n)]))
            stack.extend(reversed(kids))
        if len(order) != len(waiting):
            seen = {id(r) for r in order}
            order.extend(r for r in sorted(waiting, key=lambda r: r.arrival_seq) if id(r) not in seen)
        return order
