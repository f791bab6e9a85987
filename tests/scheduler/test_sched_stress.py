"""Stress: hundreds of requests with shared prefixes, random arrivals and aborts, on a KV pool small
enough to force eviction and retraction. Every surviving greedy output must equal the output of the
same prompt run without memory pressure, and afterwards every slot and row must be back.

The pool is 1000 tokens (prompts are up to 200 tokens, outputs up to 40): with 2000-3000 tokens
admission control leaves enough headroom that retraction almost never triggers on this workload.
Greedy outputs do not depend on batch composition here (float32, one thread); were a tie ever to
flip an argmax, the mismatch would show up in the same request in every variant.
"""
from __future__ import annotations

import random

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone


def workload(n: int, seed: int) -> dict[str, tuple[list[int], int]]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(2, 256) for _ in range(rng.randint(20, 150))] for _ in range(10)]
    reqs = {}
    for i in range(n):
        length = rng.randint(1, 200)
        head = rng.choice(prefixes) if rng.random() < 0.7 else []
        ids = (head + [rng.randrange(2, 256) for _ in range(length)])[:length]
        reqs[f"r{i}"] = (ids, rng.randint(1, 40))
    return reqs


def state_of(sched, rid: str) -> str | None:
    if any(r.rid == rid for r in sched.waiting):
        return "waiting"
    if sched.chunked_req is not None and sched.chunked_req.rid == rid:
        return "prefill"
    if sched.running is not None and any(r.rid == rid for r in sched.running.reqs):
        return "decode"
    return None


def run_stress(model: str, reqs: dict, seed: int, **settings):
    """Submit 0-12 requests per step; abort ~10% when they reach a planned state (waiting, chunked
    prefill, decoding) plus a random number of steps. Returns the driver and the aborts performed."""
    rng = random.Random(seed)
    d = Driver(make_scheduler(model, **settings))
    pending = list(reqs)
    plans = {rid: [rng.choice(["waiting", "prefill", "decode"]), rng.randint(0, 3)]
             for rid in pending if rng.random() < 0.1}
    aborted: dict[str, str] = {}
    while pending or d.sched.has_work():
        for _ in range(min(len(pending), rng.randint(0, 12))):
            rid = pending.pop(0)
            d.submit(rid, *reqs[rid])
        for rid, plan in list(plans.items()):
            if rid not in d.records or d.records[rid].finish is not None or state_of(d.sched, rid) != plan[0]:
                continue
            if plan[1]:
                plan[1] -= 1
                continue
            d.abort(rid)
            plans.pop(rid)
            assert d.records[rid].finish is not None, "abort must finish the request at once"
            aborted[rid] = plan[0]
        d.step()
        assert d.steps < 20_000, "scheduler made no progress"
    return d, aborted


def check_outputs(d: Driver, reqs: dict, ref: dict, aborted: dict) -> None:
    for rid in reqs:
        rec = d.records[rid]
        assert rec.finish is not None, rid
        if rec.finish.kind == "abort":
            assert rid in aborted, (rid, rec.finish)
            assert rec.tokens == ref[rid][:len(rec.tokens)], rid
        else:
            assert rec.finish.kind in ("length", "stop"), (rid, rec.finish)
            assert rec.tokens == ref[rid], rid


@pytest.fixture(scope="module")
def big(tiny_llama):
    reqs = workload(500, seed=0)
    return reqs, run_alone(tiny_llama, reqs)


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("overlap", [True, False])
def test_stress_500_requests(tiny_llama, big, page_size, overlap):
    reqs, ref = big
    d, aborted = run_stress(tiny_llama, reqs, seed=1, page_size=page_size, disable_overlap_schedule=not overlap,
                            max_total_tokens=1000, chunked_prefill_size=64, max_running_requests=32,
                            schedule_conservativeness=0.3)
    check_outputs(d, reqs, ref, aborted)
    stats = d.sched.stats
    assert stats.retractions > 0
    assert stats.evicted_tokens > 0
    assert set(aborted.values()) == {"waiting", "prefill", "decode"}
    assert sum(r.finish.kind == "abort" for r in d.records.values()) >= 30
    assert (stats.syncs > 0) == overlap
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.fixture(scope="module")
def variants_workload(tiny_llama):
    """The variants' 150 requests and their outputs alone: run_alone takes no variant setting, so the
    reference is the same for every variant and is computed once."""
    reqs = workload(150, seed=2)
    return reqs, run_alone(tiny_llama, reqs)


@pytest.mark.parametrize("settings", [
    dict(disable_radix_cache=True),
    dict(enable_mixed_chunk=False),
    dict(schedule_policy="lpm"),
    dict(schedule_policy="dfs-weight", page_size=4),
    dict(chunked_prefill_size=-1, max_running_requests=8),
], ids=["chunk-cache", "no-mixed", "lpm", "dfs-weight", "no-chunking"])
def test_stress_variants(tiny_llama, variants_workload, settings):
    reqs, ref = variants_workload
    base = dict(max_total_tokens=800, chunked_prefill_size=64, max_running_requests=32, schedule_conservativeness=0.3)
    d, aborted = run_stress(tiny_llama, reqs, seed=3, **{**base, **settings})
    check_outputs(d, reqs, ref, aborted)
    check_pool_clean(d.sched)
    d.sched.close()
