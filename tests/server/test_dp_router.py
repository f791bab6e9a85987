"""The data-parallel router on its own: the approximate prefix tree, the cache-aware policy, and how
the replicas' control replies combine."""
from __future__ import annotations

import random

import pytest

from jackfield.io_struct import FlushCacheOut, LoRAUpdateOut, StatsOut
from jackfield.router.approx_tree import ApproxTree
from jackfield.router.cache_aware import CacheAwareRouter, RouterConfig, route_key
from jackfield.server.dp_replies import ReplyGather, combine
from jackfield.server.messages import ControlFailed
from jackfield.server.tokenizer_manager import reply_key


def test_tree_matches_the_longest_prefix_it_holds():
    tree = ApproxTree(1000)
    tree.insert([1, 2, 3, 4, 5])
    tree.insert([1, 2, 3, 9])  # splits the first edge after 3
    tree.insert([7])
    assert tree.size == 5 + 1 + 1
    assert tree.match([1, 2, 3, 4, 5, 6]) == 5
    assert tree.match([1, 2, 3, 9, 9]) == 4
    assert tree.match([1, 2, 8]) == 2
    assert tree.match([2]) == 0 and tree.match([]) == 0
    tree.clear()
    assert tree.size == 0 and tree.match([1, 2]) == 0


def test_tree_agrees_with_a_brute_force_prefix_search():
    rng = random.Random(0)
    tree, seen = ApproxTree(10 ** 6), []
    for _ in range(300):
        base = rng.choice(seen) if seen and rng.random() < 0.6 else []
        key = base[:rng.randint(0, len(base))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 6))]
        query = key[:rng.randint(0, len(key))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]

        def common(a, b):
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            return n

        assert tree.match(query) == max((common(query, s) for s in seen), default=0)
        tree.insert(key)
        seen.append(key)


def test_tree_evicts_least_recently_used_prefixes_past_its_size():
    tree = ApproxTree(20)
    tree.insert([1] * 8)
    tree.insert([2] * 8)
    tree.insert([1] * 8)  # [1]s used again: the [2]s are now the oldest
    tree.insert([3] * 8)  # 24 > 20: evict down to 18
    assert tree.size <= 18
    assert tree.match([2] * 8) == 0
    assert tree.match([1] * 8) == 8 and tree.match([3] * 8) == 8
    shared = ApproxTree(10)
    shared.insert([5, 5, 5, 1, 1])
    shared.insert([5, 5, 5, 2, 2])
    shared.insert([9, 9, 9])  # 3 + 2 + 2 + 3 = 10: nothing evicted yet
    shared.insert([5, 5, 5, 3, 3])  # 12 > 10: the two oldest leaves go, the shared edge stays
    assert shared.size <= 9 and shared.match([5, 5, 5, 3, 3]) == 5 and shared.match([5, 5, 5, 1]) == 3


def router(n=2, **kw) -> CacheAwareRouter:
    return CacheAwareRouter(RouterConfig(max_tree_tokens=(10_000,) * n, **kw))


def test_a_family_returns_to_the_replica_that_served_it():
    r = router()
    fam_a, fam_b = list(range(100, 140)), list(range(200, 240))
    first = r.route(route_key(fam_a + [1]))
    assert (first.replica, first.reason, first.matched) == (0, "load_balance", 0)
    second = r.route(route_key(fam_b + [1]))  # loads 1 / 0: the idle replica
    assert (second.replica, second.reason) == (1, "load_balance")
    r.release(0)
    r.release(1)
    again_a = r.route(route_key(fam_a + [2, 3]))
    assert (again_a.replica, again_a.reason, again_a.matched) == (0, "cache_hit", 40)
    again_b = r.route(route_key(fam_b + [2, 3]))  # replica 1 is less loaded, and it holds the prefix
    assert (again_b.replica, again_b.reason, again_b.matched) == (1, "cache_hit", 40)
    busy_a = r.route(route_key(fam_a + [4]))  # a hit even on the busier replica (loads 2 / 1)
    assert (busy_a.replica, busy_a.reason) == (0, "cache_hit")
    new = r.route(route_key([7, 8, 9]))
    assert (new.replica, new.reason) == (1, "load_balance")  # no match: the least loaded
    assert r.loads == [2, 2]


def test_a_short_match_below_the_threshold_goes_to_the_least_loaded():
    r = router(cache_threshold=0.5)
    r.route(route_key([1, 2, 3, 4]))              # replica 0
    r.route(route_key([9, 9, 9, 9]))              # replica 1
    r.route(route_key([9, 9, 9, 9, 5]))           # a hit on 1: loads 1 / 2
    got = r.route(route_key([1, 2, 7, 7, 7, 7]))  # 2/6 of it on replica 0, under 0.5
    assert (got.replica, got.reason, got.matched) == (0, "load_balance", 2)
    tie = router()
    tie.route(route_key([1, 2, 3]))
    tie.release(0)  # loads 0 / 0: the replica whose tree holds less
    assert tie.route(route_key([4, 5, 6])).replica == 1


def test_imbalance_overrides_cache_hits():
    r = router(balance_abs_threshold=2, balance_rel_threshold=1.5)
    prefix = list(range(50))
    assert r.route(route_key(prefix)).replica == 0
    for i in range(2):  # hits pile onto replica 0: loads 3 / 0 (differ by 3 > 2, and 3 > 1.5 x 0)
        assert r.route(route_key(prefix + [i])).reason == "cache_hit"
    got = r.route(route_key(prefix + [9]))
    assert (got.replica, got.reason, got.matched) == (1, "load_balance", 0)
    assert r.trees[1].match(prefix) == 50  # replica 1 now caches the prefix as well


def test_lora_prompts_never_match_the_base_models():
    r = router()
    ids = list(range(30))
    r.route(route_key(ids))
    r.release(0)
    got = r.route(route_key(ids, lora="sql"))
    assert got.reason == "load_balance" and got.matched == 0 and got.replica == 1


def test_a_pinned_request_goes_where_it_is_told_and_is_remembered_there():
    r = router()
    got = r.route(route_key([1, 2, 3]), replica=1)
    assert (got.replica, got.reason) == (1, "pinned") and r.loads == [0, 1]
    assert r.route(route_key([1, 2, 3, 4])).replica == 1


def test_forget_clears_a_flushed_replicas_tree():
    r = router()
    r.route(route_key([1, 2, 3]))
    r.forget(0)
    assert r.trees[0].size == 0


def stats(running: int, prompt: int, cached: int) -> StatsOut:
    return StatsOut(running, 1, 10, 100, cached / prompt, 5.0, 7.0, total_prompt_tokens=prompt,
                    total_cached_tokens=cached)


def test_replies_combine_once_every_replica_answered():
    gather = ReplyGather(2, reply_key)
    assert gather.add(1, stats(2, 100, 50)) is None
    assert gather.add(1, stats(4, 10, 0)) is None  # replica 1's answer to the next stats request
    first = gather.add(0, stats(1, 300, 0))
    assert [s.num_running for s in first] == [1, 2]
    merged = combine(first)
    assert (merged.num_running, merged.num_waiting, merged.kv_total_tokens) == (3, 2, 200)
    assert merged.cache_hit_rate == pytest.approx(50 / 400) and merged.decode_tokens_per_s == 14.0
    assert [s.num_running for s in gather.add(0, stats(0, 1, 0))] == [0, 4]


def test_a_failure_on_any_replica_fails_the_request():
    assert combine([FlushCacheOut(True), FlushCacheOut(False, "busy")]) == FlushCacheOut(False, "replica 1: busy")
    assert combine([FlushCacheOut(True), FlushCacheOut(True)]).ok
    failed = ControlFailed("GetStatsReq", "boom")
    assert combine([stats(1, 1, 0), failed]) is failed
    bad = LoRAUpdateOut("r1", False, 400, "no such adapter")
    assert combine([LoRAUpdateOut("r1", True), bad]) is bad


def test_replicas_get_consecutive_device_blocks_of_those_visible(monkeypatch):
    from types import SimpleNamespace

    from jackfield.server.dp_replicas import check_single_node, replica_devices
    from jackfield.server.processes import StartupFailed

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert replica_devices(SimpleNamespace(device="cuda", dp_size=2, tp_size=2)) == [["4", "5"], ["6", "7"]]
    assert replica_devices(SimpleNamespace(device="cuda", dp_size=3, tp_size=1)) == [["4"], ["5"], ["6"]]
    assert replica_devices(SimpleNamespace(device="cpu", dp_size=8, tp_size=1)) is None
    with pytest.raises(StartupFailed, match=r"dp_size 3 x tp_size 2 needs 6 CUDA devices, but 4 are visible "
                                            r"\(4, 5, 6, 7\)"):
        replica_devices(SimpleNamespace(device="cuda", dp_size=3, tp_size=2))
    with pytest.raises(StartupFailed, match="dp_size 2 with nnodes 2"):
        check_single_node(SimpleNamespace(dp_size=2, nnodes=2))
    check_single_node(SimpleNamespace(dp_size=1, nnodes=2))
