"""get_stats (GetStatsReq): queue sizes, KV usage, cache hit rate and throughput stay consistent."""
from __future__ import annotations

import random

import pytest

from jackfield.io_struct import GetStatsReq, StatsOut
from sched_harness import Driver, check_pool_clean, make_scheduler

rng = random.Random(9)
PREFIX = [rng.randrange(2, 256) for _ in range(200)]


@pytest.mark.parametrize("overlap", [True, False])
def test_stats_during_and_after_a_run(tiny_llama, overlap):
    d = Driver(make_scheduler(tiny_llama, max_running_requests=2, disable_overlap_schedule=not overlap))
    empty = d.sched.get_stats()
    assert (empty.num_running, empty.num_waiting, empty.kv_used_tokens, empty.cache_hit_rate) == (0, 0, 0, 0.0)
    assert empty.kv_total_tokens == d.sched.runner.max_total_tokens
    d.submit("first", PREFIX + [1, 2], 20, ignore_eos=True)
    d.run()
    for i in range(5):
        d.submit(f"r{i}", PREFIX + [rng.randrange(2, 256) for _ in range(10)], 20, ignore_eos=True)
    for _ in range(3):
        d.step()
    (mid,) = d.sched.handle(GetStatsReq())
    assert isinstance(mid, StatsOut)
    assert mid.num_running == 2 and mid.num_waiting == 3
    assert 200 + 2 * 10 < mid.kv_used_tokens <= 200 + 2 * (10 + 20)  # the shared prefix is held once
    assert mid.total_prompt_tokens == 202 + 2 * 210
    assert mid.cache_hit_rate > 0
    assert mid.decode_tokens_per_s > 0 and mid.prefill_tokens_per_s >= 0
    d.run()
    end = d.sched.get_stats()
    assert (end.num_running, end.num_waiting, end.kv_used_tokens) == (0, 0, 0)
    assert end.total_prompt_tokens == 202 + 5 * 210
    assert end.total_cached_tokens >= 5 * 200
    assert end.cache_hit_rate == pytest.approx(end.total_cached_tokens / end.total_prompt_tokens)
    assert end.total_generated_tokens == 6 * 20
    assert d.sched.stats.generated_tokens == 6 * 20
    check_pool_clean(d.sched)
    d.sched.close()
