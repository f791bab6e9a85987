"""ApproxTree: what the router believes one replica's prefix cache holds.

The router never asks a replica what it caches. It remembers the prompts it sent there, in a radix
tree of their token ids (SGLang's cache-aware router keeps one of request text per worker): a
prompt the replica served recently is most likely still in its radix cache. The belief is
approximate both ways: the replica may have evicted a prefix the tree still holds (its KV pool
filled up), and it also caches the generated tokens, which the tree never sees.

Keys are sequences of hashable items: token ids, after an optional namespace item (a LoRA adapter's
prompts never share the base model's cache, see `RouteKey`). The tree holds at most `max_tokens`
items: an insert that goes past it evicts least recently inserted leaves down to `LOW_WATER` of it,
so eviction runs once per many inserts rather than on each.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Hashable, Sequence

LOW_WATER = 0.9


class _Node:
    __slots__ = ("key", "children", "parent", "last_used")

    def __init__(self, key: tuple, parent: _Node | None, last_used: int):
        self.key, self.parent, self.last_used = key, parent, last_used
        self.children: dict[Hashable, _Node] = {}


def _common(edge: tuple, key: tuple, start: int) -> int:
    """How many leading items of `edge` equal key[start:]."""
    if key[start:start + len(edge)] == edge:  # the whole edge, compared in C
        return len(edge)
    n = min(len(edge), len(key) - start)
    i = 0
    while i < n and edge[i] == key[start + i]:
        i += 1
    return i


class ApproxTree:
    def __init__(self, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._clock = itertools.count(1)
        self.clear()

    def clear(self) -> None:
        """Forget everything (the replica's cache was flushed)."""
        self.root = _Node((), None, 0)
        self.size = 0  # items held, over all edges

    def match(self, key: Sequence) -> int:
        """Length of the longest prefix of `key` the tree holds. Read-only: only the replica a
        request goes to sees its prefix used (`insert`)."""
        key, node, pos = tuple(key), self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = _common(child.key, key, pos)
            pos += n
            if n < len(child.key):
                break
            node = child
        return pos

    def insert(self, key: Sequence) -> None:
        """Remember `key` as sent to this replica now, then evict if the tree is over its size."""
        key, now = tuple(key), next(self._clock)
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                node.children[key[pos]] = _Node(key[pos:], node, now)
                self.size += len(key) - pos
                break
            n = _common(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_used = now
            node, pos = child, pos + n
        if self.size > self.max_tokens:
            self.evict(int(self.max_tokens * LOW_WATER))

    def _split(self, child: _Node, n: int) -> _Node:
        """Cut child's edge after n items; return the new upper node."""
        upper = _Node(child.key[:n], child.parent, child.last_used)
        upper.children[child.key[n]] = child
        child.parent.children[child.key[0]] = upper
        child.key, child.parent = child.key[n:], upper
        return upper

    def evict(self, target: int) -> None:
        """Drop least recently used leaves until the tree holds at most `target` items."""
        heap = [(leaf.last_used, id(leaf), leaf) for leaf in self._leaves()]
        heapq.heapify(heap)
        while self.size > target and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            self.size -= len(leaf.key)
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out
