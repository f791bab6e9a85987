"""Expert parallelism on the CPU with gloo: an MoE model at TP 2 / EP 2 (each rank holds half of
every layer's experts; tokens go to them by all-to-all and come back) gives transformers' greedy
tokens and log-probabilities; Qwen2-MoE adds a gated shared expert, which is tensor-parallel."""
from __future__ import annotations

import pytest
import torch

from jackfield.engine import Engine
from tp_harness import ENGINE, expected_table, logprob_table, reference, run, save_moe


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_expert_parallel_matches_transformers(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ref = reference(save_moe(arch, tmp_path))
    with Engine(str(tmp_path), tp_size=2, ep_size=2, moe_backend="torch_native", **ENGINE) as engine:
        ranks = engine.info.ranks
        result = run(engine)
    assert [tuple(r["experts"]) for r in ranks] == [(0, 4), (4, 8)]
    assert result["token_ids"] == ref["tokens"]
    for got, want in zip(logprob_table(result), expected_table(ref)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_dummy_weights_are_the_same_model_at_any_size(tmp_path, monkeypatch):
    """`--load-format dummy` draws every weight whole on each rank and keeps the rank's part (vocab
    rows, head and MLP slices, experts), so TP 2 / EP 2 runs the very model one rank runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save_moe("mixtral", tmp_path)
    runs = []
    for sizes in ({}, {"tp_size": 2, "ep_size": 2}):
        with Engine(str(tmp_path), load_format="dummy", moe_backend="torch_native", **sizes, **ENGINE) as engine:
            runs.append(run(engine))
    assert runs[1]["token_ids"] == runs[0]["token_ids"]
    for got, want in zip(logprob_table(runs[1]), logprob_table(runs[0])):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
