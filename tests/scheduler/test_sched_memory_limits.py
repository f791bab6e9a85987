"""Requests at the edge of the KV pool neither hang the scheduler nor get aborted while memory is
only temporarily taken by another request."""
from __future__ import annotations

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone

MODES = [dict(disable_overlap_schedule=d, page_size=p) for d in (False, True) for p in (1, 4)]
IDS = [f"overlap={not m['disable_overlap_schedule']}-page={m['page_size']}" for m in MODES]


def run_capped(d: Driver, cap: int = 2000) -> None:
    while d.sched.has_work():
        d.step()
        assert d.steps < cap, "the scheduler stopped making progress"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_prompt_larger_than_the_pool_is_rejected(tiny_llama, mode):
    d = Driver(make_scheduler(tiny_llama, max_total_tokens=300, chunked_prefill_size=64, **mode))
    d.submit("huge", [5] * 400, 5)
    rec = d.records["huge"]
    assert rec.finish is not None and rec.finish.kind == "abort" and "KV cache" in rec.finish.message
    run_capped(d)
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_request_alone_runs_until_it_outgrows_the_pool(tiny_llama, mode):
    """prompt + max_new_tokens exceeds the pool: it is admitted (nothing else runs), decodes until
    the pool is full, then is aborted for lack of memory."""
    d = Driver(make_scheduler(tiny_llama, max_total_tokens=300, **mode))
    d.submit("big", [5] * 200, 200, ignore_eos=True)
    run_capped(d)
    rec = d.records["big"]
    assert rec.finish.kind == "abort" and "out of KV cache memory" in rec.finish.message
    assert len(rec.tokens) == 300 - 200 + 1  # the last token needs no KV slot
    assert rec.tokens == run_alone(tiny_llama, {"big": ([5] * 200, 200)}, {"ignore_eos": True})["big"][:len(rec.tokens)]
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_sole_decode_is_retracted_not_aborted_while_a_chunked_prefill_holds_memory(tiny_llama, mode):
    d = Driver(make_scheduler(tiny_llama, max_total_tokens=400, chunked_prefill_size=64, **mode))
    d.submit("A", [7] * 50, 300, ignore_eos=True)
    for _ in range(3):
        d.step()
    d.submit("B", [9] * 380, 5, ignore_eos=True)
    run_capped(d)
    assert d.records["A"].finish.kind == "length" and d.records["B"].finish.kind == "length"
    assert d.sched.stats.retractions >= 1
    ref = run_alone(tiny_llama, {"A": ([7] * 50, 300), "B": ([9] * 380, 5)}, {"ignore_eos": True})
    assert d.tokens("A") == ref["A"] and d.tokens("B") == ref["B"]
    check_pool_clean(d.sched)
    d.sched.close()


def test_out_of_vocabulary_prompt_is_rejected_alone(tiny_llama):
    """A bad token id is refused at arrival; the requests beside it are not hurt."""
    d = Driver(make_scheduler(tiny_llama, max_total_tokens=2000))
    d.submit("ok", [5, 6, 7], 4)
    d.submit("bad", [5, 10**6, 7], 4)
    rec = d.records["bad"]
    assert rec.finish is not None and rec.finish.kind == "abort" and "outside the vocabulary" in rec.finish.message
    run_capped(d)
    assert d.records["ok"].finish.kind == "length"
    check_pool_clean(d.sched)
    d.sched.close()
