"""Overlap scheduling: same outputs as the normal loop, the forward really runs while the scheduler
works, failures clean up, and the offline Engine works with it on and off."""
from __future__ import annotations

import logging
import random
import time

import pytest

from jackfield.engine import Engine
from sched_harness import Driver, check_pool_clean, make_scheduler

rng = random.Random(13)
PARAMS = [
    dict(),
    dict(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2),
    dict(temperature=0.8, top_k=40, top_p=0.9, seed=1234),
    dict(min_new_tokens=5, stop_token_ids=(7, 11, 13, 17, 19, 23)),
    dict(logprobs=True, top_logprobs_num=3),
]


def mixed_run(model: str, overlap: bool) -> Driver:
    """Requests with every sampling feature, arriving while others decode, some streamed."""
    r = random.Random(21)
    d = Driver(make_scheduler(model, disable_overlap_schedule=not overlap, chunked_prefill_size=64,
                              max_total_tokens=3000, max_running_requests=16))
    for i in range(40):
        ids = [r.randrange(2, 256) for _ in range(r.randint(1, 150))]
        d.submit(f"r{i}", ids, r.randint(1, 30), stream=i % 3 == 0, **PARAMS[i % len(PARAMS)])
        if i % 4 == 3:
            d.step()
    d.run()
    return d


def test_outputs_identical_with_and_without_overlap(tiny_llama):
    on, off = mixed_run(tiny_llama, True), mixed_run(tiny_llama, False)
    for rid, rec in off.records.items():
        other = on.records[rid]
        assert other.tokens == rec.tokens, rid
        assert (other.finish.kind, other.finish.matched) == (rec.finish.kind, rec.finish.matched), rid
    assert any(rec.finish.kind == "stop" for rec in off.records.values())
    for d in (on, off):
        check_pool_clean(d.sched)
        d.sched.close()


def test_logprobs_match_with_and_without_overlap(tiny_llama):
    def run(overlap):
        sched = make_scheduler(tiny_llama, disable_overlap_schedule=not overlap)
        from jackfield.io_struct import TokenizedGenerateReq
        from jackfield.sampling.params import SamplingParams

        for i in range(6):
            sp = SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=True, top_logprobs_num=2)
            sched.handle(TokenizedGenerateReq(f"r{i}", [3 + i] * (5 + i), sp))
        lps = {}
        while sched.has_work():
            for batch in sched.step():
                for o in batch.outputs:
                    lps.setdefault(o.rid, []).extend(o.logprobs)
        sched.close()
        return lps

    on, off = run(True), run(False)
    for rid in off:
        assert [lp.token_id for lp in on[rid]] == [lp.token_id for lp in off[rid]]
        assert [lp.logprob for lp in on[rid]] == pytest.approx([lp.logprob for lp in off[rid]], abs=1e-5)
        assert len(off[rid]) == 8 and all(len(lp.top) == 2 for lp in off[rid])


def test_forward_runs_while_the_scheduler_works(tiny_llama):
    """With a slow forward and slow result processing, overlap takes about max(both) per step
    instead of their sum."""
    def timed(overlap):
        sched = make_scheduler(tiny_llama, disable_overlap_schedule=not overlap)
        forward, process = sched.runner.forward, sched._process

        def slow_forward(fb):
            time.sleep(0.04)
            return forward(fb)

        def slow_process(job, result):
            time.sleep(0.04)
            return process(job, result)

        sched.runner.forward, sched._process = slow_forward, slow_process
        d = Driver(sched)
        d.submit("a", [5, 6, 7], 12, ignore_eos=True)
        start = time.perf_counter()
        d.run()
        sched.close()
        assert len(d.tokens("a")) == 12
        return time.perf_counter() - start

    normal, overlapped = timed(False), timed(True)
    assert normal > 12 * 0.08
    assert overlapped < 0.75 * normal, (overlapped, normal)


@pytest.mark.parametrize("overlap", [True, False])
def test_failed_forward_aborts_everything_and_recovers(tiny_llama, overlap):
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=not overlap, chunked_prefill_size=32)
    forward, calls = sched.runner.forward, [0]

    def flaky(fb):
        calls[0] += 1
        if calls[0] == 6:
            raise RuntimeError("boom")
        return forward(fb)

    sched.runner.forward = flaky
    d = Driver(sched)
    for i in range(6):
        d.submit(f"r{i}", [rng.randrange(2, 256) for _ in range(20 + 30 * i)], 20, ignore_eos=True)
    with pytest.raises(RuntimeError, match="boom"):
        while sched.has_work():
            d.step()
    d.collect(sched.abort_all("internal error: boom"))
    assert all(rec.finish is not None for rec in d.records.values())
    assert any(rec.finish.message == "internal error: boom" for rec in d.records.values())
    check_pool_clean(sched)
    d.submit("after", [4, 5, 6], 5)
    d.run()
    assert d.records["after"].finish.kind == "length" and len(d.tokens("after")) == 5
    check_pool_clean(sched)
    sched.close()


def test_engine_generates_the_same_with_and_without_overlap(tiny_llama):
    prompts = [[rng.randrange(2, 256) for _ in range(n)] for n in (3, 40, 90, 7)]
    params = {"temperature": 0.0, "max_new_tokens": 10}
    outs = []
    for overlap in (True, False):
        with Engine(model=tiny_llama, device="cpu", disable_overlap_schedule=not overlap) as engine:
            outs.append([o["token_ids"] for o in engine.generate(prompts, params)])
            assert engine.get_stats().num_running == 0
    assert outs[0] == outs[1]
    assert all(len(t) == 10 or t[-1] == 0 for t in outs[0])


@pytest.mark.parametrize("overlap", [True, False])
def test_min_new_tokens_counts_launched_tokens(tiny_llama, overlap):
    """Token 7 is forced by a logit bias and stops the request, but min_new_tokens masks it for the
    first 5 outputs: the sampler must see exactly how many tokens each row generated, one step ahead."""
    d = Driver(make_scheduler(tiny_llama, disable_overlap_schedule=not overlap))
    d.submit("other", [9, 9, 9], 20, ignore_eos=True)
    d.step()
    for i, n in enumerate((1, 3, 5)):
        d.submit(f"m{i}", [4, 5, 6 + i], 20, min_new_tokens=n, stop_token_ids=(7,), logit_bias=((7, 100.0),))
    d.run()
    for i, n in enumerate((1, 3, 5)):
        toks = d.tokens(f"m{i}")
        assert len(toks) == n + 1 and toks[-1] == 7 and 7 not in toks[:-1], toks
    check_pool_clean(d.sched)
    d.sched.close()


def test_no_decode_after_the_last_token_is_launched(tiny_llama):
    """Under overlap a request whose max_new_tokens-th token is in the running forward leaves the next
    decode: every decode row computed is a token some request keeps."""
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=False, chunked_prefill_size=64)
    rows, record = [0], sched.stats.record_step

    def count(prefill_tokens, decode_tokens):
        rows[0] += decode_tokens
        record(prefill_tokens, decode_tokens)

    sched.stats.record_step = count
    d = Driver(sched)
    lens = [1, 2, 3, 5, 8, 13]
    for i, n in enumerate(lens):
        d.submit(f"r{i}", [rng.randrange(2, 256) for _ in range(10 + 20 * i)], n, ignore_eos=True)
    d.run()
    assert [len(d.tokens(f"r{i}")) for i in range(len(lens))] == lens
    assert rows[0] == sum(n - 1 for n in lens)  # the first token of each comes from its prefill
    check_pool_clean(sched)
    sched.close()


@pytest.mark.parametrize("fail_at", [3, 4, 5, 6])
def test_failure_while_a_finishing_request_is_in_flight(tiny_llama, fail_at):
    """A request that left the running batch because its last token is in flight still holds KV:
    an internal error at any step must finish it and return its KV."""
    sched = make_scheduler(tiny_llama, disable_overlap_schedule=False)
    forward, calls = sched.runner.forward, [0]

    def flaky(fb):
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("boom")
        return forward(fb)

    sched.runner.forward = flaky
    d = Driver(sched)
    for i, n in enumerate((2, 3, 4, 9)):
        d.submit(f"r{i}", [rng.randrange(2, 256) for _ in range(5 + i)], n, ignore_eos=True)
    with pytest.raises(RuntimeError, match="boom"):
        while sched.has_work():
            d.step()
    d.collect(sched.abort_all("internal error: boom"))
    assert all(rec.finish is not None for rec in d.records.values())
    check_pool_clean(sched)
    sched.close()


def test_unchecked_double_free_is_reported_when_idle(tiny_llama, caplog):
    """On CUDA the allocator counts double frees on the device instead of raising (a check would wait
    for it); the scheduler reads the count once the batch drains, logs it, and the allocator repairs
    its free list. A clean run logs nothing."""
    sched = make_scheduler(tiny_llama, max_total_tokens=3000)
    alloc = sched.runner.allocator
    alloc.checks = False  # as on CUDA
    d = Driver(sched)
    with caplog.at_level(logging.ERROR, logger="jackfield.scheduler.scheduler"):
        d.submit("clean", list(range(2, 40)), 8)
        d.run()
        assert "freed while already free" not in caplog.text
        d.submit("a", list(range(2, 40)), 8)
        d.step()
        spare = alloc.alloc(alloc.page_size)
        alloc.free(spare)
        alloc.free(spare)  # a double free while "a" decodes
        d.run()
    assert "1 KV page(s) were freed while already free" in caplog.text
    assert len(d.tokens("a")) == 8
    check_pool_clean(sched)
    sched.close()
