"""Abort: in the queue, mid-prefill (chunked) and mid-decode. The request finishes with "abort" at
once and its table row and KV slots are free (or evictable) before the next step; the requests
around it are unaffected."""
from __future__ import annotations

import random

import pytest

from jackfield.io_struct import AbortReq
from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone

rng = random.Random(3)
LONG = [rng.randrange(2, 256) for _ in range(700)]
OTHER = [rng.randrange(2, 256) for _ in range(30)]
MODES = [dict(disable_overlap_schedule=d, page_size=p) for d in (False, True) for p in (1, 4)]
IDS = [f"overlap={not m['disable_overlap_schedule']}-page={m['page_size']}" for m in MODES]


def free_tokens(sched) -> int:
    return sched.runner.allocator.available_size() + sched.tree_cache.evictable_size()


def holds(sched, rid: str) -> int:
    """KV slots held by request rid (the pages of its table row up to kv_len), 0 if it holds none."""
    reqs = ([sched.chunked_req] if sched.chunked_req else []) + (sched.running.reqs if sched.running else [])
    page = sched.runner.page_size
    return next((-(-r.kv_len // page) * page for r in reqs if r.rid == rid), 0)


def assert_aborted(d: Driver, rid: str) -> None:
    rec = d.records[rid]
    assert rec.finish is not None and rec.finish.kind == "abort"
    assert rec.finish.message == "aborted"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_abort_in_queue(tiny_llama, mode):
    d = Driver(make_scheduler(tiny_llama, max_running_requests=1, **mode))
    d.submit("running", OTHER, 6)
    d.step()
    d.submit("queued", LONG, 6)
    d.step()
    assert [r.rid for r in d.sched.waiting] == ["queued"]
    before = (free_tokens(d.sched), d.sched.runner.req_to_token_pool.available_size())
    d.abort("queued")
    assert_aborted(d, "queued")
    assert d.records["queued"].tokens == []
    assert not d.sched.waiting
    assert (free_tokens(d.sched), d.sched.runner.req_to_token_pool.available_size()) == before
    d.run()
    assert d.records["running"].finish.kind == "length"
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_abort_mid_chunked_prefill(tiny_llama, mode):
    d = Driver(make_scheduler(tiny_llama, chunked_prefill_size=64, max_total_tokens=4000, **mode))
    d.submit("other", OTHER, 30, ignore_eos=True)
    d.submit("long", LONG, 6)
    for _ in range(4):
        d.step()
    assert d.sched.chunked_req is not None and d.sched.chunked_req.rid == "long"
    rows = d.sched.runner.req_to_token_pool.available_size()
    free = free_tokens(d.sched)
    d.abort("long")
    assert_aborted(d, "long")
    assert d.sched.chunked_req is None
    assert d.sched.runner.req_to_token_pool.available_size() == rows + 1
    assert free_tokens(d.sched) > free
    assert free_tokens(d.sched) == d.sched.runner.max_total_tokens - holds(d.sched, "other")
    d.run()
    assert d.tokens("other") == run_alone(tiny_llama, {"other": (OTHER, 30)})["other"]
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_abort_mid_decode(tiny_llama, mode):
    d = Driver(make_scheduler(tiny_llama, **mode))
    d.submit("other", OTHER, 30, ignore_eos=True)
    d.submit("victim", LONG[:100], 30, stream=True, ignore_eos=True)
    for _ in range(6):
        d.step()
    assert d.records["victim"].tokens, "the victim should be decoding"
    rows = d.sched.runner.req_to_token_pool.available_size()
    d.abort("victim")
    assert_aborted(d, "victim")
    assert d.sched.runner.req_to_token_pool.available_size() == rows + 1
    assert free_tokens(d.sched) == d.sched.runner.max_total_tokens - holds(d.sched, "other")
    assert all(r.rid != "victim" for r in d.sched.running.reqs)
    n = len(d.records["victim"].tokens)
    d.run()
    assert len(d.records["victim"].tokens) == n, "no output after the abort"
    assert d.records["victim"].tokens == run_alone(tiny_llama, {"v": (LONG[:100], 30)})["v"][:n]
    assert d.tokens("other") == run_alone(tiny_llama, {"other": (OTHER, 30)})["other"]
    check_pool_clean(d.sched)
    d.sched.close()


def test_abort_unknown_or_finished_is_a_no_op(tiny_llama):
    d = Driver(make_scheduler(tiny_llama))
    d.submit("done", OTHER, 3)
    d.run()
    assert d.sched.handle(AbortReq("done")) == []
    assert d.sched.handle(AbortReq("nobody")) == []
    check_pool_clean(d.sched)
    d.sched.close()
