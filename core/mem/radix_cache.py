"""RadixCache: a radix tree over token ids whose nodes own KV slots (RadixAttention).

Each non-root node owns `value`, the int64 KV slots of its `key`. With page_size > 1 keys hold whole
pages and children are keyed by their first page's token tuple. `lock_ref` counts the requests whose
prefix runs through a node; locked nodes are never evicted. The root is always locked, owns nothing.

Namespaces keep prefixes apart that must never share KV (requests of different LoRA adapters):
`match_prefix` and `insert` take a hashable `namespace` (None: the base model), and each namespace
other than None has its own sub-root under the root, keyed `("ns", namespace)` (never equal to a
token or a page of tokens), locked like the root and owning nothing. `drop_namespace` frees a whole
namespace once nothing uses it.

Request helpers take the scheduler's Req (`req_pool_idx`, `origin_input_ids`, `output_ids`,
`prefix_indices`, `last_node`, `cache_protected_len`, and `cache_namespace` when it has one). The caller has locked `req.last_node`, set
`cache_protected_len` to the tree-owned prefix length, and filled req_to_token[req_pool_idx, :kv_len].
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.req_to_token import ReqToTokenPool

_node_ids = itertools.count()


class TreeNode:
    def __init__(self, key: list[int] | None = None, value: torch.Tensor | None = None, parent: "TreeNode | None" = None):
        self.id = next(_node_ids)
        self.children: dict[Any, TreeNode] = {}
        self.parent = parent
        self.key: list[int] = key if key is not None else []
        self.value: torch.Tensor = value if value is not None else torch.empty(0, dtype=torch.int64)
        self.lock_ref = 0
        self.last_access_time = 0

    def __lt__(self, other: "TreeNode") -> bool:
        return (self.last_access_time, self.id) < (other.last_access_time, other.id)


@dataclass(frozen=True)
class MatchResult:
    """`indices`: int64 KV slots of the matched prefix; `last_node`: the node where the match ends."""

    indices: torch.Tensor
    last_node: Any


class RadixCache:
    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: TokenAllocator, page_size: int):
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        self.page_size = page_size
        self.device = allocator.device
        self._clock = itertools.count(1)
        self._new_root()

    def _new_root(self) -> None:
        self.root_node = TreeNode(value=self._empty())
        self.root_node.lock_ref = 1
        self._evictable_size = self._protected_size = 0

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """Free every slot the tree holds. Raises RuntimeError if any node is locked."""
        if self._protected_size:
            raise RuntimeError("RadixCache.reset with locked nodes")
        self.allocator.free(self.all_values())
        self._new_root()

    def evictable_size(self) -> int:
        return self._evictable_size

    def protected_size(self) -> int:
        return self._protected_size

    def total_size(self) -> int:
        """Tokens held by the tree (evictable + protected)."""
        return self._evictable_size + self._protected_size

    def _nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.root_node.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def all_values(self) -> torch.Tensor:
        """Concatenated slots of every node (for integrity checks)."""
        values = [n.value for n in self._nodes()]
        return torch.cat(values) if values else self._empty()

    def _child_key(self, key: list[int]):
        return key[0] if self.page_size == 1 else tuple(key[: self.page_size])

    def _match_len(self, a: list[int], b: list[int]) -> int:
        i, n = 0, min(len(a), len(b))
        while i < n and a[i] == b[i]:
            i += 1
        return i - i % self.page_size

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    def _namespace_root(self, namespace, create: bool) -> TreeNode | None:
        if namespace is None:
            return self.root_node
        key = ("ns", namespace)
        node = self.root_node.children.get(key)
        if node is None and create:
            node = TreeNode(value=self._empty(), parent=self.root_node)
            node.lock_ref = 1
            self.root_node.children[key] = node
        return node

    def drop_namespace(self, namespace) -> int:
        """Free every slot cached under `namespace` and remove it; returns the tokens freed.
        Raises RuntimeError if a request still holds a node of it."""
        top = self._namespace_root(namespace, create=False)
        if top is None or namespace is None:
            return 0
        nodes, stack = [], list(top.children.values())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children.values())
        if any(n.lock_ref for n in nodes):
            raise RuntimeError(f"drop_namespace({namespace!r}) while a request holds one of its prefixes")
        freed = sum(len(n.key) for n in nodes)
        if nodes:
            self.allocator.free(torch.cat([n.value for n in nodes]))
        self._evictable_size -= freed
        del self.root_node.children[("ns", namespace)]
        return freed

    def match_prefix(self, token_ids: list[int], namespace=None) -> MatchResult:
        """Longest cached prefix of token_ids (page-aligned) within `namespace`. May split a node;
        never frees or owns."""
        key = list(token_ids[: self._aligned(len(token_ids))])
        top, values, now = self._namespace_root(namespace, create=False), [], next(self._clock)
        if top is None:
            return MatchResult(indices=self._empty(), last_node=self.root_node)
        node = top
        node.last_access_time = now
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = now
            n = self._match_len(child.key, key)
            if n < len(child.key):
                node = self._split(child, n)
                values.append(node.value)
                break
            values.append(child.value)
            node, key = child, key[n:]
        return MatchResult(indices=torch.cat(values) if values else self._empty(), last_node=node)

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut child's edge after n tokens; return the new upper node (same lock_ref)."""
        parent = child.parent
        upper = TreeNode(key=child.key[:n], value=child.value[:n], parent=parent)
        upper.lock_ref, upper.last_access_time = child.lock_ref, child.last_access_time
        child.key, child.value, child.parent = child.key[n:], child.value[n:], upper
        upper.children[self._child_key(child.key)] = child
        parent.children[self._child_key(upper.key)] = upper
        return upper

    def insert(self, token_ids: list[int], slots: torch.Tensor, namespace=None) -> int:
        """Insert the page-aligned part of (token_ids, slots) into `namespace`; return the length
        already cached.

        The tree takes ownership of slots[prefix_len:aligned_len]; slots[:prefix_len] stay the
        caller's (they duplicate tree slots and the caller must free those it owns).
        """
        n = self._aligned(min(len(token_ids), slots.numel()))
        key, value = list(token_ids[:n]), slots[:n]
        node, now, prefix_len = self._namespace_root(namespace, create=bool(key)), next(self._clock), 0
        if node is None:
            return 0
        node.last_access_time = now
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = now
            m = self._match_len(child.key, key)
            if m < len(child.key):
                child = self._split(child, m)
            prefix_len += m
            node, key, value = child, key[m:], value[m:]
        if key:
            leaf = TreeNode(key=key, value=value.to(device=self.device, dtype=torch.int64).clone(), parent=node)
            leaf.last_access_time = now
            node.children[self._child_key(key)] = leaf
            self._evictable_size += len(key)
        return prefix_len

    def inc_lock_ref(self, node: TreeNode) -> None:
        """Lock the path node..root (the root excluded) against eviction."""
        while node is not None and node is not self.root_node:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
            node.lock_ref, node = node.lock_ref + 1, node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        """Undo one inc_lock_ref(node). Raises RuntimeError on an unlocked node."""
        while node is not None and node is not self.root_node:
            if node.lock_ref <= 0:
                raise RuntimeError(f"dec_lock_ref on unlocked node {node.id} (key length {len(node.key)})")
            if node.lock_ref == 1:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
            node.lock_ref, node = node.lock_ref - 1, node.parent

    def evict(self, num_tokens: int) -> int:
        """Free least-recently-used unlocked leaves until num_tokens are freed; return tokens freed."""
        heap = [n for n in self._nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            node = heapq.heappop(heap)
            self.allocator.free(node.value)
            freed += len(node.key)
            self._evictable_size -= len(node.key)
            parent = node.parent
            del parent.children[self._child_key(node.key)]
            if parent is not self.root_node and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        return freed

    def _req_tokens_and_slots(self, req, kv_len: int) -> tuple[list[int], torch.Tensor]:
        if kv_len < req.cache_protected_len:
            raise ValueError(f"kv_len {kv_len} is below the request's cache_protected_len {req.cache_protected_len}")
        token_ids = (list(req.origin_input_ids) + list(req.output_ids))[:kv_len]
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx, :kv_len]
        return token_ids, row.to(device=self.device, dtype=torch.int64)

    def _insert_req(self, req, token_ids: list[int], slots: torch.Tensor) -> int:
        aligned = self._aligned(len(token_ids))
        prefix_len = self.insert(token_ids[:aligned], slots[:aligned], getattr(req, "cache_namespace", None))
        self.allocator.free(slots[req.cache_protected_len:prefix_len])
        return aligned

    def cache_finished_req(self, req, kv_len: int) -> None:
        """Hand a finished request's first kv_len slots to the tree; free what it cannot keep; unlock."""
        token_ids, slots = self._req_tokens_and_slots(req, kv_len)
        aligned = self._insert_req(req, token_ids, slots)
        self.allocator.free(slots[aligned:])
        self.dec_lock_ref(req.last_node)

    def cache_unfinished_req(self, req, kv_len: int) -> None:
        """Cache a running request's first kv_len tokens and re-point it at the tree's slots.

        Afterwards req_to_token[req_pool_idx, :matched] holds tree slots, the lock sits on the new
        last_node, cache_protected_len = matched (page-aligned), and prefix_indices (length kv_len)
        = tree slots + the unaligned tail slots the request still owns.
        """
        token_ids, slots = self._req_tokens_and_slots(req, kv_len)
        aligned = self._insert_req(req, token_ids, slots)
        match = self.match_prefix(token_ids[:aligned], getattr(req, "cache_namespace", None))
        matched = match.indices.numel()
        if matched != aligned:
            raise RuntimeError(f"cache_unfinished_req: re-match found {matched} of {aligned} tokens")
        self.req_to_token_pool.req_to_token[req.req_pool_idx, :matched] = match.indices.to(torch.int32)
        self.inc_lock_ref(match.last_node)
        self.dec_lock_ref(req.last_node)
        req.prefix_indices = torch.cat([match.indices, slots[matched:]])
        req.last_node = match.last_node
        req.cache_protected_len = matched

    def release_req(self, req, kv_len: int) -> None:
        """Retract: free the request's own slots [cache_protected_len, kv_len) without caching; unlock."""
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx, req.cache_protected_len:kv_len]
        self.allocator.free(row.to(torch.int64))
        self.dec_lock_ref(req.last_node)

    def pretty_print(self) -> str:
        """One line per node, indented by depth: first tokens, length and lock count."""
        lines, stack = [], [(self.root_node, 0)]
        while stack:
            node, depth = stack.pop()
            lines.append(f"{'  ' * depth}{node.key[:8]} len={len(node.key)} lock={node.lock_ref}")
            stack.extend((c, depth + 1) for c in node.children.values())
        return "\n".join(lines)
