"""Late launch: the clock's prediction of when the running decode step ends, and the scheduler's
deadline from it (launch_clock.py)."""
from __future__ import annotations

import pytest

from jackfield.io_struct import TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams
from jackfield.scheduler.launch_clock import MARGIN_S, MARGIN_SHARE, WINDOW, LaunchClock
from sched_harness import check_pool_clean, make_scheduler


def test_a_step_is_predicted_from_its_size_or_the_largest_smaller_one_down_to_half():
    clock = LaunchClock()
    for batch, seconds in ((1, 0.005), (4, 0.006), (9, 0.008)):
        clock.finished(now=0.0, device_s=seconds, decode_batch=batch)
    assert [clock.step_s(b) for b in (1, 2, 3, 4, 7, 8, 9, 17, 18, 19)] == \
        [0.005, 0.005, None, 0.006, 0.006, 0.006, 0.008, 0.008, 0.008, None]


def test_no_deadline_until_the_running_size_was_measured():
    clock = LaunchClock()
    assert clock.launch_at() is None
    clock.launched(now=10.0, host_s=0.001, decode_batch=3)
    assert clock.launch_at() is None  # no decode step measured yet
    clock.finished(now=10.004, device_s=0.006, decode_batch=1)
    assert clock.launch_at() is None  # batch 1 measured: too far below 3 to guess from


def test_deadline_is_the_predicted_end_less_the_margin():
    clock = LaunchClock()
    clock.launched(now=1.0, host_s=0.002, decode_batch=4)
    clock.finished(now=1.001, device_s=0.010, decode_batch=4)  # the job before: started 1.001 at the latest
    clock.launched(now=1.0015, host_s=0.002, decode_batch=4)
    clock.finished(now=1.011, device_s=0.010, decode_batch=4)
    end = 1.011 + 0.010
    assert clock.launch_at() == pytest.approx(end - (MARGIN_S + 2 * 0.002 + MARGIN_SHARE * 0.010))
    # launched after the previous job had finished: it starts at its launch
    clock.launched(now=2.0, host_s=0.002, decode_batch=4)
    assert clock.launch_at() == pytest.approx(2.0 + 0.010 - (MARGIN_S + 2 * 0.002 + MARGIN_SHARE * 0.010))
    # a prefill running: its length is not predicted
    clock.launched(now=3.0, host_s=0.002, decode_batch=None)
    assert clock.launch_at() is None


def test_a_slow_step_does_not_hold_the_plan_back():
    clock = LaunchClock()
    clock.finished(now=0.0, device_s=2.0, decode_batch=2)  # a first step that paid for something once
    assert clock.step_s(2) == 2.0
    clock.finished(now=0.0, device_s=0.010, decode_batch=2)
    assert clock.step_s(2) == 0.010  # the shortest of the recent steps
    for _ in range(WINDOW):
        clock.finished(now=0.0, device_s=0.012, decode_batch=2)
    assert clock.step_s(2) == 0.012  # the 0.010 step left the window


def _decode_a_while(sched, steps: int = 6):
    for i in range(2):
        sched.handle(TokenizedGenerateReq(f"r{i}", [5 + i] * 12, SamplingParams(max_new_tokens=40, temperature=0.0)))
    for _ in range(steps):
        sched.step()


@pytest.mark.parametrize("late", [True, False])
def test_scheduler_deadline_under_overlap(tiny_llama, late):
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=False, disable_late_launch=not late)
    try:
        _decode_a_while(sched)
        deadline = sched.launch_deadline()
        if not late:
            assert deadline is None
        else:
            assert deadline is not None
            # the running decode step started when the last wait returned, and the next plan is due
            # before it ends (the CPU's worker thread measures each step's own time)
            assert sched.clock.done_at - 1.0 < deadline < sched.clock.done_at + sched.clock.step_s(2)
            sched.handle(TokenizedGenerateReq("new", [9] * 12, SamplingParams(max_new_tokens=4)))
            assert sched.launch_deadline() is None  # a request waits: plan it now
        while sched.has_work():
            sched.step()
        check_pool_clean(sched)
    finally:
        sched.close()


def test_serial_scheduler_has_no_deadline(tiny_llama):
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=True)
    try:
        _decode_a_while(sched, steps=3)
        assert sched.clock is None and sched.launch_deadline() is None
        while sched.has_work():
            sched.step()
    finally:
        sched.close()


def test_offline_engine_outputs_unchanged_by_late_launch(tiny_llama):
    from jackfield.engine import Engine

    outs = {}
    for late in (True, False):
        with Engine(model=tiny_llama, disable_overlap_schedule=False, disable_late_launch=not late) as eng:
            outs[late] = [o["token_ids"] for o in eng.generate([[3 + i] * (4 + i) for i in range(6)],
                                                               {"max_new_tokens": 16, "temperature": 0.0})]
    assert outs[True] == outs[False] and all(len(t) == 16 for t in outs[True])
