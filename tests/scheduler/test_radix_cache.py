import random
from dataclasses import dataclass, field

import pytest
import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.chunk_cache import ChunkCache
from jackfield.mem.radix_cache import RadixCache
from jackfield.mem.req_to_token import ReqToTokenPool


def make_cache(page_size=1, num_pages=64, reqs=8, ctx=256, cls=RadixCache):
    pool = ReqToTokenPool(reqs, ctx, "cpu")
    alloc = TokenAllocator(num_pages, page_size, "cpu")
    return cls(pool, alloc, page_size), pool, alloc


@dataclass
class FakeReq:
    origin_input_ids: list[int]
    req_pool_idx: int = 0
    output_ids: list[int] = field(default_factory=list)
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: object = None
    cache_protected_len: int = 0
    kv_len: int = 0


def test_match_after_insert_returns_same_slots():
    cache, _, alloc = make_cache()
    slots = alloc.alloc(5)
    assert cache.insert([1, 2, 3, 4, 5], slots) == 0
    m = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert torch.equal(m.indices, slots)
    assert cache.match_prefix([9]).indices.numel() == 0
    assert cache.insert([1, 2, 3, 4, 5, 6], torch.cat([slots, alloc.alloc(1)])) == 5
    assert cache.total_size() == 6 == cache.evictable_size()


def test_partial_match_splits_node():
    cache, _, alloc = make_cache()
    slots = alloc.alloc(6)
    cache.insert([1, 2, 3, 4, 5, 6], slots)
    m = cache.match_prefix([1, 2, 3, 9])
    assert torch.equal(m.indices, slots[:3])
    assert m.last_node.key == [1, 2, 3] and len(m.last_node.children) == 1
    child = next(iter(m.last_node.children.values()))
    assert child.key == [4, 5, 6] and child.parent is m.last_node
    assert cache.total_size() == 6 and torch.equal(cache.match_prefix([1, 2, 3, 4, 5, 6]).indices, slots)


def test_page_aligned_matching():
    cache, _, alloc = make_cache(page_size=4)
    slots = alloc.alloc(12)[:10]
    assert cache.insert(list(range(10)), slots) == 0
    assert cache.total_size() == 8
    assert torch.equal(cache.match_prefix(list(range(10))).indices, slots[:8])
    assert torch.equal(cache.match_prefix(list(range(7)) + [99]).indices, slots[:4])
    assert cache.match_prefix([0, 1, 2]).indices.numel() == 0
    assert cache.match_prefix([0, 1, 2, 99]).indices.numel() == 0


def test_lock_prevents_eviction_and_lru_order():
    cache, _, alloc = make_cache()
    a, b, c = alloc.alloc(3), alloc.alloc(3), alloc.alloc(3)
    cache.insert([1, 2, 3], a)
    cache.insert([4, 5, 6], b)
    cache.insert([7, 8, 9], c)
    cache.match_prefix([1, 2, 3])  # a becomes most recently used; b is now the oldest
    locked = cache.match_prefix([7, 8, 9]).last_node
    cache.inc_lock_ref(locked)
    assert cache.protected_size() == 3 and cache.evictable_size() == 6
    free = alloc.available_size()
    assert cache.evict(1) == 3
    assert cache.match_prefix([4, 5, 6]).indices.numel() == 0
    assert cache.match_prefix([1, 2, 3]).indices.numel() == 3
    assert cache.evict(100) == 3
    assert alloc.available_size() == free + 6
    assert cache.total_size() == 3 and cache.match_prefix([7, 8, 9]).indices.numel() == 3
    cache.dec_lock_ref(locked)
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(locked)
    cache.evict(100)
    assert alloc.available_size() == alloc.capacity and cache.total_size() == 0


def test_evict_cascades_to_parents():
    cache, _, alloc = make_cache()
    s, dup = alloc.alloc(5), alloc.alloc(2)
    cache.insert([1, 2, 3, 4], s[:4])
    assert cache.insert([1, 2, 9], torch.cat([dup, s[4:]])) == 2
    alloc.free(dup)  # already cached: the caller frees its duplicate slots
    assert cache.total_size() == 5
    assert cache.evict(100) == 5 and alloc.available_size() == alloc.capacity


@pytest.mark.parametrize("page_size", [1, 4])
def test_cache_unfinished_req_rewrites_req_to_token(page_size):
    cache, pool, alloc = make_cache(page_size=page_size)
    shared = list(range(100, 108))
    first = FakeReq(shared + [1, 2], req_pool_idx=pool.alloc(), last_node=cache.root_node)
    slots = alloc.alloc_extend([0], [10], [-1])
    pool.req_to_token[first.req_pool_idx, :10] = slots.to(torch.int32)
    cache.cache_finished_req(first, 10)
    pool.free(first.req_pool_idx)
    tree_slots = cache.match_prefix(shared).indices

    req = FakeReq(shared + [5, 6, 7], req_pool_idx=pool.alloc(), last_node=cache.root_node)
    own = alloc.alloc_extend([0], [11], [-1])  # computed without using the cache
    pool.req_to_token[req.req_pool_idx, :11] = own.to(torch.int32)
    cache.cache_unfinished_req(req, 11)
    row = pool.req_to_token[req.req_pool_idx, :11].long()
    assert torch.equal(row[:8], tree_slots)
    aligned = 11 - 11 % page_size
    assert req.cache_protected_len == aligned
    assert req.prefix_indices.numel() == 11
    assert torch.equal(req.prefix_indices[:aligned], row[:aligned])
    assert torch.equal(req.prefix_indices[aligned:], own[aligned:])
    assert req.last_node.lock_ref == 1 and cache.protected_size() == aligned
    cache.release_req(req, 11)
    pool.free(req.req_pool_idx)
    assert cache.protected_size() == 0
    cache.evict(10**9)
    assert alloc.available_size() == alloc.capacity


def test_chunk_cache_frees_everything():
    cache, pool, alloc = make_cache(page_size=4, cls=ChunkCache)
    req = FakeReq([1, 2, 3, 4, 5], req_pool_idx=pool.alloc())
    m = cache.match_prefix(req.origin_input_ids)
    assert m.indices.numel() == 0 and m.last_node is cache.root_node
    slots = alloc.alloc_extend([0], [5], [-1])
    pool.req_to_token[req.req_pool_idx, :5] = slots.to(torch.int32)
    cache.cache_unfinished_req(req, 5)
    assert torch.equal(req.prefix_indices, slots) and req.cache_protected_len == 0
    cache.cache_finished_req(req, 5)
    assert alloc.available_size() == alloc.capacity and cache.evictable_size() == 0


class Simulator:
    """Drives a cache like a scheduler: admit, chunked prefill, decode, finish, retract."""

    def __init__(self, page_size: int, seed: int):
        self.rng = random.Random(seed)
        self.ps = page_size
        self.cache, self.pool, self.alloc = make_cache(page_size, num_pages=160 // page_size, reqs=6, ctx=128)
        self.bases = [[self.rng.randrange(5) for _ in range(self.rng.randint(3, 20))] for _ in range(4)]
        self.running: list[FakeReq] = []

    def tokens(self, req):
        return req.origin_input_ids + req.output_ids

    def check(self):
        owned = [req.prefix_indices for req in self.running]
        tree = self.cache.all_values()
        assert tree.numel() == self.cache.total_size()
        assert self.cache.evictable_size() + self.cache.protected_size() == self.cache.total_size()
        pages_tree = set((tree // self.ps).tolist())
        req_pages = [set((self.pool.req_to_token[r.req_pool_idx, r.cache_protected_len:r.kv_len].long() // self.ps).tolist())
                     for r in self.running]
        assert len(pages_tree) * self.ps == tree.numel()
        used = len(pages_tree) + sum(len(p) for p in req_pages)
        union = pages_tree.union(*req_pages)
        assert len(union) == used, "a page is owned twice"
        assert used + self.alloc.num_free_pages() == self.alloc.num_pages, "leaked or over-freed pages"
        for r, o in zip(self.running, owned):
            assert torch.equal(o[: r.kv_len], self.pool.req_to_token[r.req_pool_idx, : r.kv_len].long())

    def alloc_or_evict(self, prefix, extend, last):
        out = self.alloc.alloc_extend([prefix], [extend], [last])
        if out is None:
            self.cache.evict(extend + self.ps)
            out = self.alloc.alloc_extend([prefix], [extend], [last])
        return out

    def admit(self):
        idx = self.pool.alloc()
        if idx is None:
            return
        base = self.rng.choice(self.bases)
        req = FakeReq(base[: self.rng.randint(1, len(base))] + [self.rng.randrange(5) for _ in range(self.rng.randint(0, 12))],
                      req_pool_idx=idx)
        m = self.cache.match_prefix(req.origin_input_ids[:-1])
        self.cache.inc_lock_ref(m.last_node)
        req.prefix_indices, req.last_node = m.indices, m.last_node
        req.cache_protected_len = req.kv_len = m.indices.numel()
        self.pool.req_to_token[idx, : req.kv_len] = m.indices.to(torch.int32)
        self.running.append(req)

    def step(self, req):
        target = len(self.tokens(req))
        if req.kv_len < len(req.origin_input_ids):
            extend = min(self.rng.randint(1, 9), len(req.origin_input_ids) - req.kv_len)
        elif self.rng.random() < 0.2 or target > 100:
            self.finish(req, self.cache.cache_finished_req)
            return
        else:
            if req.kv_len == target:
                req.output_ids.append(self.rng.randrange(5))
            extend = 1
        last = int(req.prefix_indices[-1]) if req.kv_len else -1
        out = self.alloc_or_evict(req.kv_len, extend, last)
        if out is None:
            self.finish(req, self.cache.release_req)
            return
        self.pool.req_to_token[req.req_pool_idx, req.kv_len : req.kv_len + extend] = out.to(torch.int32)
        req.prefix_indices = torch.cat([req.prefix_indices, out])
        req.kv_len += extend
        if req.kv_len == len(req.origin_input_ids) and not req.output_ids:
            req.output_ids.append(self.rng.randrange(5))
        if self.rng.random() < 0.5:
            self.cache.cache_unfinished_req(req, req.kv_len)

    def finish(self, req, how):
        how(req, req.kv_len)
        self.pool.free(req.req_pool_idx)
        self.running.remove(req)

    def run(self, steps: int):
        for _ in range(steps):
            if not self.running or (len(self.running) < 6 and self.rng.random() < 0.3):
                self.admit()
            elif self.rng.random() < 0.05:
                self.finish(self.rng.choice(self.running), self.cache.release_req)
            else:
                self.step(self.rng.choice(self.running))
            self.check()
        for req in list(self.running):
            self.finish(req, self.cache.cache_finished_req)
        assert self.cache.protected_size() == 0
        self.cache.evict(10**9)
        assert self.cache.total_size() == 0
        assert self.alloc.available_size() == self.alloc.capacity
        self.alloc.debug_check()


@pytest.mark.parametrize("page_size,seed", [(1, 0), (1, 1), (4, 2), (4, 3), (2, 4)])
def test_randomized_no_leak_no_double_free(page_size, seed):
    Simulator(page_size, seed).run(1500)


def test_reset_frees_tree():
    cache, _, alloc = make_cache(page_size=2)
    cache.insert([1, 2, 3, 4], alloc.alloc(4))
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and alloc.available_size() == alloc.capacity
