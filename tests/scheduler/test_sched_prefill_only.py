"""Prefill-only requests and prompt readouts in the scheduler (tiny random Llama, token ids):
embeddings and prompt logprobs beside ordinary generations, chunked, over cached prefixes, with
and without overlap; a failing forward aborts them with their KV returned."""
from __future__ import annotations

import pytest
import torch

from jackfield.io_struct import TokenizedEmbeddingReq, TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams
from jackfield.scheduler import prompt_readout
from sched_harness import Driver, ReqRecord, check_pool_clean, make_scheduler

GEN = torch.Generator().manual_seed(3)
PROMPTS = [torch.randint(2, 256, (n,), generator=GEN).tolist() for n in (37, 9, 50, 23)]


def submit(d: Driver, rid: str, msg) -> None:
    d.records[rid] = ReqRecord()
    d.collect(d.sched.handle(msg))


def run(tiny_llama, overlap: bool, page_size: int) -> dict:
    d = Driver(make_scheduler(tiny_llama, chunked_prefill_size=16, page_size=page_size,
                              disable_overlap_schedule=not overlap, max_total_tokens=4096))
    seen = {}
    orig = d.collect

    def collect(outs):  # keep the readout fields of every output
        for batch in outs:
            for o in batch.outputs:
                if o.input_logprobs is not None or o.embedding is not None:
                    seen[o.rid] = (o.input_logprobs, o.embedding)
        return orig(outs)

    d.collect = collect
    d.submit("warm", PROMPTS[2][:30], 3)  # caches a prefix of the third prompt
    d.run()
    for i, ids in enumerate(PROMPTS):
        d.submit(f"gen{i}", ids, 6)
        submit(d, f"emb{i}", TokenizedEmbeddingReq(f"emb{i}", ids, "mean" if i % 2 else "last"))
        sp = SamplingParams(max_new_tokens=i % 2 * 4, temperature=0.0, top_logprobs_num=2)
        submit(d, f"lp{i}", TokenizedGenerateReq(f"lp{i}", ids, sp, stream=True, logprob_start_len=i * 3))
    d.run()
    check_pool_clean(d.sched)
    d.sched.close()
    return {rid: (rec.tokens, rec.finish.kind, seen.get(rid)) for rid, rec in d.records.items()}


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return run(tiny_llama, overlap=False, page_size=1)


@pytest.mark.parametrize("overlap,page_size,slice_rows", [(True, 1, None), (False, 4, 3), (True, 4, None)])
def test_prefill_only_requests_beside_generations(tiny_llama, reference, overlap, page_size, slice_rows, monkeypatch):
    if slice_rows is not None:  # the LM head over 3 prompt positions at a time
        monkeypatch.setattr(prompt_readout, "SLICE_BYTES", slice_rows * 4 * 256)
    got = run(tiny_llama, overlap, page_size)
    for i, ids in enumerate(PROMPTS):
        tokens, kind, (lps, emb) = got[f"emb{i}"]
        assert (tokens, kind, lps) == ([], "stop", None) and len(emb) == 64
        ref_emb = reference[f"emb{i}"][2][1]
        assert torch.allclose(torch.tensor(emb), torch.tensor(ref_emb), atol=1e-5), f"emb{i}"
        tokens, kind, (lps, emb) = got[f"lp{i}"]
        assert emb is None and len(tokens) == i % 2 * 4 and kind == "length"
        assert [lp.token_id for lp in lps] == ids[i * 3:]
        assert (lps[0].logprob is None) == (i == 0)
        ref = reference[f"lp{i}"][2][0]
        for a, b in zip(lps, ref):
            assert a.logprob == b.logprob or abs(a.logprob - b.logprob) < 1e-5
            assert [t for t, _ in a.top] == [t for t, _ in b.top] and len(a.top) == (0 if a.logprob is None else 2)
        assert got[f"gen{i}"][0] == reference[f"gen{i}"][0]


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_readout_forward_aborts_its_requests(tiny_llama, overlap):
    d = Driver(make_scheduler(tiny_llama, disable_overlap_schedule=not overlap, max_total_tokens=4096))

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    d.sched.runner.forward_reading = broken
    submit(d, "emb", TokenizedEmbeddingReq("emb", PROMPTS[0], "last"))
    d.submit("gen", PROMPTS[1], 4)
    while d.sched.has_work():
        try:
            d.step()
        except RuntimeError:
            d.collect(d.sched.abort_all("internal error: injected"))
    assert d.records["emb"].finish.kind == "abort" and d.records["gen"].finish.kind == "abort"
    check_pool_clean(d.sched)
    d.sched.close()
