"""Tensor parallelism end to end on the CPU with gloo: the offline Engine at TP 2 and TP 4 (one
follower process per extra rank, in lockstep with rank 0's scheduler) gives transformers' greedy
tokens and log-probabilities within float32 tolerance, and so does a quantization method (each
rank quantizes its own shard) against the same method on one rank."""
from __future__ import annotations

import pytest
import torch

from jackfield.engine import Engine
from tp_harness import ENGINE, expected_table, logprob_table, reference, run, save_model



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama_tp")
    return directory, reference(save_model(directory))


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_transformers(tiny, tp, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    directory, ref = tiny
    with Engine(str(directory), tp_size=tp, **ENGINE) as engine:
        ranks = engine.info.ranks
        result = run(engine)
    assert [r["rank"] for r in ranks] == list(range(tp))
    assert [tuple(r["heads"]) for r in ranks] == [(i * 4 // tp, (i + 1) * 4 // tp) for i in range(tp)]
    kv = [tuple(r["kv_heads"]) for r in ranks]
    assert kv == ([(0, 1), (1, 2)] if tp == 2 else [(0, 1), (0, 1), (1, 2), (1, 2)])  # replicated at TP 4
    assert len({r["kv_tokens"] for r in ranks}) == 1
    assert result["token_ids"] == ref["tokens"]
    got_prompt, got_chosen = logprob_table(result)
    want_prompt, want_chosen = expected_table(ref)
    torch.testing.assert_close(got_prompt, want_prompt, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_chosen, want_chosen, atol=1e-4, rtol=1e-4)


def test_tp_with_quantization_matches_one_rank(tiny, monkeypatch):
    """int4_weight_only quantizes each rank's shard in groups of 32 input columns; the shards cut
    on group boundaries, so TP 2 computes the one-rank quantized model (up to the all-reduce's
    bfloat16 partial sums)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    directory, _ = tiny
    with Engine(str(directory), quantization="int4_weight_only", **ENGINE) as engine:
        one = run(engine)
    with Engine(str(directory), quantization="int4_weight_only", tp_size=2, **ENGINE) as engine:
        assert engine.info.components["quantization"]["name"] == "int4_weight_only"
        two = run(engine)
    assert two["token_ids"] == one["token_ids"]
    for got, want in zip(logprob_table(two), logprob_table(one)):
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
