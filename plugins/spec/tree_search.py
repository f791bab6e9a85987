"""EAGLE-2's dynamic draft tree, shared by the draft-model and EAGLE decoders (one per request).

Every node carries its cumulative log-probability (the sum of the draft's log-probabilities along
its path). Step 0 expands the root into its top-k tokens; each later step expands the current
frontier (k nodes) into k children each and keeps the k best of those k*k candidates, by
cumulative score, as the next frontier. Every candidate is kept. `select(n)` re-ranks all of them
and returns the n best as a tree: in descending score order (ties by creation), a node is taken
only once its parent is, which never drops one since a child never scores above its parent.

The draft forwards run over `forward_nodes()`: the frontier and its ancestors, in creation order
(parents first), so a frontier node attends to its whole path.
"""
from __future__ import annotations

import torch


class TreeSearch:
    def __init__(self, topk: int):
        self.topk = topk
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.scores: list[float] = []
        self.frontier: list[int] = []

    def _add(self, token: int, parent: int, score: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(score)
        return len(self.tokens) - 1

    def expand_root(self, logprobs: torch.Tensor) -> None:
        """Step 0: the root's top-k tokens ([V] log-probabilities of the token after the root)."""
        vals, ids = logprobs.float().topk(self.topk)
        self.frontier = [self._add(t, -1, v) for t, v in zip(ids.tolist(), vals.tolist())]

    def expand(self, logprobs: torch.Tensor) -> None:
        """A later step: [len(frontier), V] log-probabilities of the frontier nodes' next tokens."""
        vals, ids = logprobs.float().topk(self.topk, dim=-1)
        base = torch.tensor([self.scores[f] for f in self.frontier]).unsqueeze(1)
        cum = (vals.cpu() + base).reshape(-1)
        order = cum.topk(min(self.topk, cum.numel())).indices.tolist()
        ids_l, cum_l = ids.reshape(-1).tolist(), cum.tolist()
        new = {}
        for j in range(len(ids_l)):
            new[j] = self._add(ids_l[j], self.frontier[j // self.topk], cum_l[j])
        self.frontier = [new[j] for j in order]

    def forward_nodes(self) -> list[int]:
        """The frontier and all its ancestors, in creation order."""
        keep = set()
        for f in self.frontier:
            while f >= 0 and f not in keep:
                keep.add(f)
                f = self.parents[f]
        return sorted(keep)

    def select(self, n: int) -> tuple[list[int], list[int]]:
        """(tokens, parents) of the n best nodes as a tree, parents first."""
        order = sorted(range(len(self.tokens)), key=lambda i: (-self.scores[i], i))
        chosen: set[int] = set()
        for i in order:
            if len(chosen) >= n:
                break
            if self.parents[i] < 0 or self.parents[i] in chosen:
                chosen.add(i)
        nodes = sorted(chosen)
        where = {node: j for j, node in enumerate(nodes)}
        return [self.tokens[i] for i in nodes], [where.get(self.parents[i], -1) for i in nodes]


def subtree(search: TreeSearch, nodes: list[int]) -> tuple[list[int], list[int]]:
    """(tokens, parents) of `nodes` (closed under parents, sorted) re-indexed among themselves."""
    where = {node: j for j, node in enumerate(nodes)}
    return [search.tokens[i] for i in nodes], [where.get(search.parents[i], -1) for i in nodes]
