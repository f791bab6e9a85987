"""A forward that fails because of one request fails that request only (scheduler/isolation.py):
the others finish with the tokens they would have produced anyway, the pool comes back clean."""
from __future__ import annotations

import random

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone

POISON = [99, 98, 97, 96]  # a forward whose input holds this run of token ids raises


def poisoned_forward(sched):
    forward = sched.runner.forward

    def forward_or_raise(fb):
        ids = fb.input_ids.tolist()
        if any(ids[i:i + len(POISON)] == POISON for i in range(len(ids))):
            raise RuntimeError("poisoned input")
        return forward(fb)

    sched.runner.forward = forward_or_raise


def run_recovering(d: Driver, max_steps: int = 10_000) -> None:
    """Driver.run, recovering from failed steps the way the scheduler loops do."""
    while d.sched.has_work():
        try:
            d.step()
        except RuntimeError as exc:
            d.collect(d.sched.recover(exc))
        assert d.steps < max_steps, "scheduler did not finish"


@pytest.mark.parametrize("overlap", [True, False])
def test_only_the_poisoned_request_fails(tiny_llama, overlap):
    r = random.Random(5)
    prompts = {f"r{i}": ([r.randrange(2, 90) for _ in range(10 + 15 * i)], 12) for i in range(5)}
    expected = run_alone(tiny_llama, prompts, {"ignore_eos": True})
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=not overlap, chunked_prefill_size=32)
    poisoned_forward(sched)
    d = Driver(sched)
    for rid, (ids, max_new) in list(prompts.items())[:3]:
        d.submit(rid, ids, max_new, ignore_eos=True)
    d.submit("bad", [5, 6, *POISON, 7] * 3, 12, ignore_eos=True)
    for rid, (ids, max_new) in list(prompts.items())[3:]:
        d.submit(rid, ids, max_new, ignore_eos=True)
    run_recovering(d)
    bad = d.records["bad"].finish
    assert bad.kind == "abort" and bad.status == 500 and "poisoned input" in bad.message
    for rid in prompts:
        assert d.records[rid].finish.kind == "length", (rid, d.records[rid].finish)
        assert d.tokens(rid) == expected[rid], rid
    assert sched.stats.isolated_failures >= 1
    check_pool_clean(sched)
    sched.close()


def test_a_request_failing_every_forward_is_aborted_after_max_failures(tiny_llama):
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=True)
    forward = sched.runner.forward
    sched.runner.forward = lambda fb: (_ for _ in ()).throw(RuntimeError("always")) if fb.batch_size > 1 else forward(fb)
    d = Driver(sched)
    for i in range(3):
        d.submit(f"r{i}", [3 + i] * 8, 6, ignore_eos=True)
    run_recovering(d)
    finishes = [d.records[f"r{i}"].finish for i in range(3)]
    assert all(f is not None for f in finishes)
    assert sum(f.kind == "length" for f in finishes) >= 1  # isolation let at least one through
    check_pool_clean(sched)
    sched.close()
