"""The n-gram decoder's two sources of continuations, and the tree their matches are merged into.

* `HistoryIndex`: one request's own tokens, with every n-gram (n in [min_n, max_n]) mapped to the
  positions right after its occurrences, updated as tokens arrive (max_n dict updates per token).
  The suffix of the request is looked up longest first; each earlier occurrence gives the tokens
  that followed it (prompt-lookup decoding).
* `TokenTrie`: the token windows of recent requests (every position's next `depth` tokens), with a
  count per node. A request's suffix is walked down the trie, longest first; the subtree below it
  gives continuations, most frequent first. Past `capacity` nodes the trie starts over.
* `DraftTree`: continuations merged into one tree (shared prefixes share nodes) within a budget.
"""
from __future__ import annotations


class HistoryIndex:
    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def extend_to(self, tokens) -> None:
        """Catch up with the request's full token list (its first len(self.tokens) are known)."""
        for t in tokens[len(self.tokens):]:
            self.tokens.append(t)
            end = len(self.tokens)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.ends.setdefault(tuple(self.tokens[end - n:end]), []).append(end)

    def continuations(self, budget: int, max_matches: int) -> list[list[int]]:
        """Up to `max_matches` continuations of the current suffix, longest match and latest first."""
        toks, end, out = self.tokens, len(self.tokens), []
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            ends = self.ends.get(tuple(toks[end - n:]), ())
            for e in ends[-1 - 4 * max_matches:][::-1]:  # the latest occurrences only
                if e >= end:
                    continue  # the suffix itself
                cont = toks[e:e + budget]
                if cont and cont not in out:
                    out.append(cont)
                if len(out) >= max_matches:
                    return out
            if out:
                return out  # a longer match is better evidence than any shorter one
        return out


class _Node:
    __slots__ = ("children", "count")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.count = 0


class TokenTrie:
    def __init__(self, depth: int, capacity: int):
        self.depth, self.capacity = depth, capacity
        self.root = _Node()
        self.size = 0

    def insert(self, tokens: list[int]) -> None:
        """Add every window tokens[i:i + depth]."""
        if self.size > self.capacity:
            self.root, self.size = _Node(), 0
        for i in range(len(tokens)):
            node = self.root
            for t in tokens[i:i + self.depth]:
                child = node.children.get(t)
                if child is None:
                    child = node.children[t] = _Node()
                    self.size += 1
                child.count += 1
                node = child

    def continuations(self, suffix: list[int], min_n: int, max_n: int, budget: int,
                      max_paths: int) -> list[list[int]]:
        """Paths below the longest suffix of `suffix` (at least min_n tokens) found in the trie,
        most frequent first (greedy by count at every level)."""
        for n in range(min(max_n, self.depth - 1, len(suffix)), min_n - 1, -1):
            node = self.root
            for t in suffix[len(suffix) - n:]:
                node = node.children.get(t)
                if node is None:
                    break
            if node is None or not node.children:
                continue
            paths = []
            for first in sorted(node.children.items(), key=lambda kv: -kv[1].count)[:max_paths]:
                path, cur = [first[0]], first[1]
                while cur.children and len(path) < budget:
                    tok, cur = max(cur.children.items(), key=lambda kv: kv[1].count)
                    path.append(tok)
                paths.append(path)
            return paths
        return []


class DraftTree:
    """Continuations merged into a tree of at most `budget` nodes (parents before children)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._index: dict[tuple[int, int], int] = {}  # (parent, token) -> node

    def add(self, path: list[int]) -> None:
        parent = -1
        for t in path:
            node = self._index.get((parent, t))
            if node is None:
                if len(self.tokens) >= self.budget:
                    return
                node = len(self.tokens)
                self.tokens.append(t)
                self.parents.append(parent)
                self._index[(parent, t)] = node
            parent = node
