"""Speculative steps inside the scheduler, on the kit's tiny random Llama: greedy output equal to
plain decoding under continuous batching (mixed lengths, requests joining mid-run, chunked prefill,
the radix cache, page sizes, overlap), seeded sampling identical with and without speculation,
logprobs, per-request opt-out, penalties, KV accounting after many rejections, bad proposals."""
from __future__ import annotations

import random

import pytest
import torch

from jackfield.sdk import DraftProposal, SpeculativeDecoder
from jackfield.spec.tree import ProposalError
from jackfield.testing.suites.speculative import pool_idle_problem, run_workload, spec_scheduler, workload
from jackfield_plugins.spec.draft_model import DraftModelDecoder
from jackfield_plugins.spec.eagle import EagleDecoder
from jackfield_plugins.spec.ngram import NgramDecoder

DECODERS = {"ngram": (NgramDecoder, {}), "draft_model": (DraftModelDecoder, {}), "eagle": (EagleDecoder, {}),
            # topk 1: chains drafted on the device (DraftRunner.chain) instead of trees
            "draft_model_chain": (DraftModelDecoder, {"speculative_eagle_topk": 1, "speculative_num_steps": 4}),
            "eagle_chain": (EagleDecoder, {"speculative_eagle_topk": 1, "speculative_num_steps": 4})}


def shared_prefix_jobs():
    """Mixed lengths with a shared 40-token prefix (radix hits), long prompts that are chunked, and
    requests that join while others decode."""
    base = [3 + (5 * j) % 90 for j in range(40)]
    jobs = []
    for i in range(8):
        tail = [7 + (i * 11 + j) % 80 for j in range(2 + 9 * i)]
        jobs.append((f"s{i}", base + tail + base[:10] if i % 2 else tail * 3, 20 + i, (i % 4) * 4))
    return jobs


def run(cls, model, tmp_path, jobs=None, params=None, **settings):
    sched = spec_scheduler(cls, model, str(tmp_path), **settings)
    try:
        out = run_workload(sched, jobs, **(params or {}))
        assert pool_idle_problem(sched) is None, pool_idle_problem(sched)
        sched.tree_cache.evict(1 << 30)
        sched.runner.allocator.debug_check()
        return out, sched
    finally:
        sched.close()


@pytest.fixture(scope="module")
def plain(tiny_target, tmp_path_factory):
    work = tmp_path_factory.mktemp("plain")
    return {key: run(None, tiny_target, work, shared_prefix_jobs(), chunked_prefill_size=32, page_size=page)[0]
            for key, page in (("p1", 1), ("p4", 4))}


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("page, overlap", [(1, False), (4, True)])
def test_greedy_equals_plain_under_continuous_batching(name, page, overlap, plain, tiny_target, tmp_path):
    cls, extra = DECODERS[name]
    out, sched = run(cls, tiny_target, tmp_path, shared_prefix_jobs(), chunked_prefill_size=32,
                     page_size=page, disable_overlap_schedule=not overlap, **extra)
    assert out == plain[f"p{page}"]
    st = sched.spec.stats
    assert st.verify_steps > 0 and sched.stats.cached_tokens > 0  # speculated, with radix hits
    if name == "draft_model_chain":  # the draft is the target itself: nearly every draft is accepted
        assert st.accepted >= 0.9 * st.proposed > 0


def test_seeded_sampling_is_identical_with_speculation(tiny_target, tmp_path):
    """A seeded request draws each token from noise keyed by its output position, and verify picks
    use the node's position: the same tokens come out with or without speculation."""
    params = {"temperature": 0.9, "top_p": 0.9, "top_k": 20, "seed": 1234}
    want, _ = run(None, tiny_target, tmp_path, params=params)
    got, sched = run(DraftModelDecoder, tiny_target, tmp_path, params=params)
    assert got == want
    assert sched.spec.stats.accepted > 0


def test_logprobs_match_plain_decoding(tiny_target, tmp_path):
    from jackfield.io_struct import TokenizedGenerateReq
    from jackfield.sampling.params import SamplingParams

    def logprobs(cls):
        sched = spec_scheduler(cls, tiny_target, str(tmp_path))
        rec = {}
        for rid, ids, n, _ in workload()[:3]:
            sched.handle(TokenizedGenerateReq(rid, ids, SamplingParams(max_new_tokens=n, temperature=0, logprobs=True,
                                                                       top_logprobs_num=2)))
        while sched.has_work():
            for b in sched.step():
                for o in b.outputs:
                    rec.setdefault(o.rid, []).extend(o.logprobs or [])
        sched.close()
        return rec

    want, got = logprobs(None), logprobs(DraftModelDecoder)
    for rid in want:
        assert [lp.token_id for lp in got[rid]] == [lp.token_id for lp in want[rid]]
        assert torch.allclose(torch.tensor([lp.logprob for lp in got[rid]]),
                              torch.tensor([lp.logprob for lp in want[rid]]), atol=1e-4)


def test_opt_out_and_penalties_decode_plainly(tiny_target, tmp_path):
    from jackfield.io_struct import TokenizedGenerateReq
    from jackfield.sampling.params import SamplingParams

    jobs = workload()[:3]
    kinds = [{"speculative": False}, {"repetition_penalty": 1.3}, {}]
    outs = {}
    for cls in (None, DraftModelDecoder):
        sched = spec_scheduler(cls, tiny_target, str(tmp_path))
        for (rid, ids, n, _), extra in zip(jobs, kinds):
            sched.handle(TokenizedGenerateReq(rid, ids, SamplingParams(max_new_tokens=n, temperature=0, **extra)))
        got = {}
        while sched.has_work():
            for b in sched.step():
                for o in b.outputs:
                    got.setdefault(o.rid, [[], None])[0].extend(o.new_token_ids)
                    got[o.rid][1] = o.spec
        outs[cls] = got
        sched.close()
    plain, spec = outs[None], outs[DraftModelDecoder]
    assert {r: v[0] for r, v in plain.items()} == {r: v[0] for r, v in spec.items()}
    assert spec["k0"][1] is None and spec["k1"][1] is None  # never verified
    assert spec["k2"][1]["verify_ct"] > 0 and spec["k2"][1]["accepted"] > 0


class RandomTrees(SpeculativeDecoder):
    """Full random trees every step: nearly every node is rejected."""

    name = "random_trees"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.rng = random.Random(0)

    def propose(self, spec_input):
        tokens, parents = [], []
        for budget in spec_input.max_drafts:
            tokens.append([self.rng.randrange(self.runtime.model_config.vocab_size) for _ in range(budget)])
            parents.append([self.rng.randrange(-1, j) for j in range(budget)])
        return DraftProposal.from_lists(tokens, parents)


@pytest.mark.parametrize("page", [1, 4])
def test_kv_back_to_idle_after_many_rejections(page, plain, tiny_target, tmp_path):
    out, sched = run(RandomTrees, tiny_target, tmp_path, shared_prefix_jobs(), chunked_prefill_size=32, page_size=page)
    assert out == plain[f"p{page}"]
    st = sched.spec.stats
    assert st.proposed > 500 and st.accepted < st.proposed / 10


class OverBudget(RandomTrees):
    name = "over_budget"

    def propose(self, spec_input):
        return DraftProposal(torch.zeros(len(spec_input), self.runtime.max_drafts + 1, dtype=torch.int64))


def test_malformed_proposal_is_reported_and_leaks_nothing(tiny_target, tmp_path):
    sched = spec_scheduler(OverBudget, tiny_target, str(tmp_path))
    with pytest.raises(ProposalError, match="over_budget"):
        run_workload(sched)
    sched.abort_all("internal error")
    assert pool_idle_problem(sched) is None
    sched.close()


def test_trees_padded_for_verify_graphs_give_the_same_tokens(plain, tiny_target, tmp_path):
    """With verify CUDA graphs every tree is padded to num_draft_tokens nodes (children of the root
    that are never accepted); emulated here with graphs that never run."""
    from types import SimpleNamespace

    sched = spec_scheduler(NgramDecoder, tiny_target, str(tmp_path), chunked_prefill_size=32)
    sched.runner.verify_graphs = SimpleNamespace(max_bs=64, t=8, can_run=lambda fb: False)
    sizes = []
    forward = sched.runner.forward
    sched.runner.forward = lambda fb: sizes.append(set(fb.extend_seq_lens_cpu)) or forward(fb)
    out = run_workload(sched, shared_prefix_jobs())
    assert out == plain["p1"] and pool_idle_problem(sched) is None
    assert {8} in sizes
    sched.close()


def test_plain_steps_are_timed_without_the_prefill_they_waited_for(tiny_target, tmp_path, monkeypatch):
    """Under overlap a decode step waits for the forward launched before it: after a prefill that is
    the prefill's time, which the load policy must not take for a decode step's."""
    import time

    sched = spec_scheduler(NgramDecoder, tiny_target, str(tmp_path), disable_overlap_schedule=False)
    forward = sched.runner.forward

    def slow_prefill(fb, *args, **kwargs):
        if fb.mode.is_extend():
            time.sleep(0.2)
        return forward(fb, *args, **kwargs)

    recorded, record = [], sched.spec.policy.record_plain
    monkeypatch.setattr(sched.runner, "forward", slow_prefill)
    monkeypatch.setattr(sched.spec.policy, "record_plain", lambda b, s: (recorded.append(s), record(b, s)))
    try:
        run_workload(sched, speculative=False)  # plain steps only, two requests join mid-run (a second prefill)
    finally:
        sched.close()
    assert len(recorded) > 10 and max(recorded) < 0.2


def test_verify_graph_runner_warms_the_eager_verify_path(tiny_target, tmp_path, monkeypatch):
    """At startup the verify graph runner runs one eager verify forward on a padding-only batch
    (request-table row 0, KV slot 0), so kernels that eager batches above the captured sizes use are
    built then; emulated on the CPU with the captures skipped: it runs and takes no KV slot."""
    from jackfield.spec.verify_graph import VerifyGraphRunner

    sched = spec_scheduler(NgramDecoder, tiny_target, str(tmp_path))
    runner, ran = sched.runner, []
    monkeypatch.setattr(VerifyGraphRunner, "_capture_all", lambda self: None)
    forward = runner.model.forward
    monkeypatch.setattr(runner.model, "forward", lambda ids, pos, fb: ran.append(fb.mode) or forward(ids, pos, fb))
    free = runner.allocator.available_size()
    VerifyGraphRunner(runner, 8, 4)
    assert [m.is_verify() for m in ran] == [True] and runner.allocator.available_size() == free
    assert pool_idle_problem(sched) is None
    sched.close()
