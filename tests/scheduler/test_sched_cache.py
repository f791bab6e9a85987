"""Prefix caching through the Scheduler: hits on a shared system prompt, no hits with the radix cache
off, and correct recomputation after the cached prefix was evicted."""
from __future__ import annotations

import random

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone

rng = random.Random(7)
SYSTEM = [rng.randrange(2, 256) for _ in range(512)]
SUFFIXES = [[rng.randrange(2, 256) for _ in range(rng.randint(3, 40))] for _ in range(16)]


def shared_prompt_run(model: str, **settings) -> Driver:
    """The first request alone (it fills the cache), then the other 15 at once."""
    d = Driver(make_scheduler(model, **settings))
    d.submit("q0", SYSTEM + SUFFIXES[0], 8)
    d.run()
    for i in range(1, 16):
        d.submit(f"q{i}", SYSTEM + SUFFIXES[i], 8)
    d.run()
    return d


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("overlap", [True, False])
def test_shared_system_prompt_hits_cache(tiny_llama, page_size, overlap):
    d = shared_prompt_run(tiny_llama, page_size=page_size, disable_overlap_schedule=not overlap)
    assert d.records["q0"].cached_tokens == 0
    for i in range(1, 16):
        assert d.records[f"q{i}"].cached_tokens >= 512, i
    ref = run_alone(tiny_llama, {f"q{i}": (SYSTEM + SUFFIXES[i], 8) for i in range(16)}, disable_radix_cache=True)
    assert {rid: d.tokens(rid) for rid in ref} == ref
    stats = d.sched.get_stats()
    assert stats.cache_hit_rate > 0.8
    assert stats.total_cached_tokens >= 15 * 512
    check_pool_clean(d.sched)
    d.sched.close()


def test_radix_cache_disabled_reports_no_hits(tiny_llama):
    d = shared_prompt_run(tiny_llama, disable_radix_cache=True)
    assert all(rec.cached_tokens == 0 for rec in d.records.values())
    assert d.sched.get_stats().cache_hit_rate == 0.0
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("overlap", [True, False])
def test_evicted_prefix_is_recomputed_correctly(tiny_llama, overlap):
    prompt = [rng.randrange(2, 256) for _ in range(600)]
    d = Driver(make_scheduler(tiny_llama, max_total_tokens=1500, chunked_prefill_size=256,
                              disable_overlap_schedule=not overlap))
    d.submit("a", prompt, 12)
    d.run()
    d.submit("b", prompt, 12)  # full hit while cached
    d.run()
    assert d.records["b"].cached_tokens >= 599
    assert d.tokens("b") == d.tokens("a")
    for i in range(6):  # unrelated traffic larger than the pool pushes the prompt out
        d.submit(f"other{i}", [rng.randrange(2, 256) for _ in range(400)], 4)
    d.run()
    assert d.sched.stats.evicted_tokens > 0
    d.submit("c", prompt, 12)
    d.run()
    assert d.records["c"].cached_tokens < d.records["b"].cached_tokens
    assert d.tokens("c") == d.tokens("a")
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("overlap", [True, False])
def test_running_request_prompt_is_shared_before_it_finishes(tiny_llama, overlap):
    """Prefill KV enters the tree when the prefill is done (cache_unfinished_req), not when the
    request finishes: a later request reuses it while the first is still decoding."""
    d = Driver(make_scheduler(tiny_llama, chunked_prefill_size=128, disable_overlap_schedule=not overlap))
    d.submit("long-runner", SYSTEM, 60, ignore_eos=True)
    for _ in range(8):
        d.step()
    assert d.records["long-runner"].finish is None
    d.submit("late", SYSTEM + SUFFIXES[1], 4)
    while d.records["late"].finish is None:
        d.step()
    assert d.records["long-runner"].finish is None
    assert d.records["late"].cached_tokens >= 511
    d.run()
    check_pool_clean(d.sched)
    d.sched.close()
