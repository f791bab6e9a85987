"""The n-gram decoder's two sources of continuations, and the tree their matches are merged into.

* `HistoryIndex`: one request's own tokens, with every n-gram (n in [min_n, max_n]) mapped to the
  positions right after its occurrences (latest first), updated as tokens arrive (max_n dict
  updates per token).
  The suffix of the request is looked up longest first; each earlier occurrence gives the tokens
  that followed it (prompt-lookup decoding).
* `TokenTrie`: the token windows of recent requests (every position's next `depth` tokens), with a
  count per node. A request's suffix is walked down the trie, longest first; the subtree below it
  gives continuations, most frequent first. Past `capacity` nodes the trie starts over.
* `DraftTree`: continuations merged into one tree (shared prefixes share nodes) within a budget.
"""
from __future__ import annotations


class HistoryIndex:
    """`last` maps an n-gram to the end of its latest occurrence; `prev[n - min_n][end]` is the end
    of the occurrence before the one of the n-gram ending at `end` (0: none), so occurrences are
    walked latest first. Ints in flat lists, not a list per n-gram: nothing the garbage collector
    has to walk grows with the request."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}
        self.prev: list[list[int]] = [[0] for _ in range(min_n, max_n + 1)]

    def extend_to(self, tokens) -> None:
        """Catch up with the request's full token list (its first len(self.tokens) are known)."""
        toks, last = self.tokens, self.last
        for t in tokens[len(toks):]:
            toks.append(t)
            end = len(toks)
            for n, prev in enumerate(self.prev, self.min_n):
                if n <= end:
                    key = tuple(toks[end - n:])
                    prev.append(last.get(key, 0))
                    last[key] = end
                else:
                    prev.append(0)

    def continuations(self, budget: int, max_matches: int) -> list[list[int]]:
        """Up to `max_matches` continuations of the current suffix, longest match and latest first."""
        toks, end, out = self.tokens, len(self.tokens), []
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            e, prev = self.last.get(tuple(toks[end - n:]), 0), self.prev[n - self.min_n]
            for _ in range(1 + 4 * max_matches):  # the latest occurrences only
                if not e:
                    break
                if e < end:  # (not the suffix itself)
                    cont = toks[e:e + budget]
                    if cont and cont not in out:
                        out.append(cont)
                    if len(out) >= max_matches:
                        return out
                e = prev[e]
            if out:
                return out  # a longer match is better evidence than any shorter one
        return out


class TokenTrie:
    """Nodes are integers: `children[node]` maps a token to the child node, `counts[node]` is how
    many windows pass through it (node 0 is the root). Dicts of ints only are not tracked by
    Python's garbage collector, so a trie of hundreds of thousands of nodes costs no collection
    time, and a new node is two list appends instead of an object."""

    def __init__(self, depth: int, capacity: int):
        self.depth, self.capacity = depth, capacity
        self.children: list[dict[int, int]] = [{}]
        self.counts: list[int] = [0]

    @property
    def size(self) -> int:
        return len(self.counts) - 1

    def insert(self, tokens: list[int]) -> None:
        """Add every window tokens[i:i + depth]."""
        if self.size > self.capacity:
            self.children, self.counts = [{}], [0]
        children, counts, depth = self.children, self.counts, self.depth
        for i in range(len(tokens)):
            node = 0
            for t in tokens[i:i + depth]:
                kids = children[node]
                child = kids.get(t)
                if child is None:
                    child = kids[t] = len(counts)
                    children.append({})
                    counts.append(0)
                counts[child] += 1
                node = child

    def continuations(self, suffix: list[int], min_n: int, max_n: int, budget: int,
                      max_paths: int) -> list[list[int]]:
        """Paths below the longest suffix of `suffix` (at least min_n tokens) found in the trie,
        most frequent first (greedy by count at every level)."""
        children, counts = self.children, self.counts
        for n in range(min(max_n, self.depth - 1, len(suffix)), min_n - 1, -1):
            node: int | None = 0
            for t in suffix[len(suffix) - n:]:
                node = children[node].get(t)
                if node is None:
                    break
            if node is None or not children[node]:
                continue
            paths = []
            for tok, cur in sorted(children[node].items(), key=lambda kv: -counts[kv[1]])[:max_paths]:
                path = [tok]
                while children[cur] and len(path) < budget:
                    tok, cur = max(children[cur].items(), key=lambda kv: counts[kv[1]])
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
