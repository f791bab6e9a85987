"""Chunked prefill: a 4,000-token prompt arriving while 8 requests decode must not stall them.

Mixed mode runs every prefill chunk together with the running decodes, so each decoding request
gets a token in every step of the long prefill; without mixed mode prefill and decode steps
alternate, so decodes still progress at least every other step. Under overlap scheduling a step
returns the tokens of the previous step's forward, so the token window is shifted by one step.
"""
from __future__ import annotations

import random

import pytest

from sched_harness import Driver, check_pool_clean, make_scheduler, run_alone

rng = random.Random(11)
LONG = [rng.randrange(2, 256) for _ in range(4000)]
SHORT = [[rng.randrange(2, 256) for _ in range(rng.randint(5, 30))] for _ in range(8)]


def run_with_long_prompt(model: str, mixed: bool, overlap: bool):
    d = Driver(make_scheduler(model, chunked_prefill_size=256, enable_mixed_chunk=mixed,
                              disable_overlap_schedule=not overlap))
    for i, ids in enumerate(SHORT):
        d.submit(f"d{i}", ids, 120, stream=True, ignore_eos=True)
    for _ in range(4):
        d.step()
    assert d.sched.running is not None and len(d.sched.running) == 8
    d.submit("long", LONG, 4)
    per_step, prefill_steps = [], []
    while d.records["long"].finish is None:
        prefilling = d.sched.chunked_req is not None or any(r.rid == "long" for r in d.sched.waiting)
        prefill_steps.append(prefilling)
        got = d.step()
        per_step.append({o.rid: len(o.new_token_ids) for o in got})
    d.run()
    return d, per_step, prefill_steps


@pytest.mark.parametrize("overlap", [False, True])
def test_decodes_progress_every_step_in_mixed_mode(tiny_llama, overlap):
    d, per_step, prefilling = run_with_long_prompt(tiny_llama, mixed=True, overlap=overlap)
    window = [i + int(overlap) for i, p in enumerate(prefilling) if p]
    assert len(window) >= 4000 // 256
    for i in window:
        for k in range(8):
            assert per_step[i].get(f"d{k}") == 1, (i, k, per_step[i])
    ref = run_alone(tiny_llama, {"long": (LONG, 4)}, chunked_prefill_size=-1, max_prefill_tokens=8192)
    assert d.tokens("long") == ref["long"]
    assert all(len(d.tokens(f"d{k}")) == 120 for k in range(8))
    check_pool_clean(d.sched)
    d.sched.close()


@pytest.mark.parametrize("overlap", [False, True])
def test_decodes_progress_every_other_step_without_mixing(tiny_llama, overlap):
    d, per_step, prefilling = run_with_long_prompt(tiny_llama, mixed=False, overlap=overlap)
    window = [i + int(overlap) for i, p in enumerate(prefilling) if p]
    assert len(window) >= 4000 // 256
    for a, b in zip(window, window[1:]):
        if b != a + 1:
            continue
        for k in range(8):
            assert per_step[a].get(f"d{k}", 0) + per_step[b].get(f"d{k}", 0) >= 1, (a, k)
    assert all(len(d.tokens(f"d{k}")) == 120 for k in range(8))
    check_pool_clean(d.sched)
    d.sched.close()
