"""Prompt logprobs and pooled hidden states, read inside the prefill (scheduler/prompt_readout.py),
on the embedded SmolLM2 against transformers' log-softmax and hidden states (float32, CPU).

The Engine runs with chunked prefill forced to 16 tokens and the overlap loop on (the forward worker
thread), so a prompt spans several chunks and each chunk is planned before the previous chunk's
values are recorded. A radix-cached prefix is present where the tests say so.

Set JACKFIELD_TEST_SMOLLM2=0 to skip the module.
"""
from __future__ import annotations

import os

import pytest
import torch

from model_harness import load_smollm2_hf, within

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

CHUNK = 16
TOL = 2e-4  # absolute, on logprobs of magnitude up to ~20 (float32 through 30 layers)
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting each step aloud, "
        "until the lamp at the top was lit and the ships far out at sea could find their way home.")
MORE = " Nobody in the village remembered a night when the light had failed."


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_hf_dir):
    return load_smollm2_hf(smollm2_hf_dir)


@pytest.fixture(scope="module")
def engine():
    from jackfield.engine import Engine

    # float32 weights, as transformers runs them (with llama-cpp-python installed, auto picks gguf)
    with Engine(chunked_prefill_size=CHUNK, disable_overlap_schedule=False, kv_cache_bytes=64 << 20,
                quantization="unquantized") as eng:
        yield eng


@pytest.fixture(scope="module")
def ids(engine) -> list[int]:
    ids = engine.tokenizer.encode(TEXT)
    assert len(ids) > 2 * CHUNK  # at least three chunks
    return ids


@pytest.fixture(scope="module")
def longer(engine, ids) -> list[int]:
    return ids + engine.tokenizer.encode(MORE)


@torch.no_grad()
def reference(hf, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' log-softmax [len, vocab] and final hidden states [len, hidden]."""
    out = hf(torch.tensor([ids]), output_hidden_states=True)
    return torch.log_softmax(out.logits[0].float(), dim=-1), out.hidden_states[-1][0].float()


def check_logprobs(entries: list[dict], ids: list[int], start: int, ref: torch.Tensor, top: int) -> None:
    assert [e["token_id"] for e in entries] == ids[start:]
    for p, e in enumerate(entries, start):
        if p == 0:
            assert e["logprob"] is None and e["top_logprobs"] == []
            continue
        want = float(ref[p - 1, ids[p]])
        assert abs(e["logprob"] - want) < TOL, f"position {p}: {e['logprob']} vs transformers {want}"
        assert len(e["top_logprobs"]) == top
        best = ref[p - 1].topk(top).values.tolist() if top else []
        for (token, value), ref_value in zip(e["top_logprobs"], best):
            assert abs(value - ref_value) < TOL and abs(value - float(ref[p - 1, token])) < TOL, f"position {p}"


def test_prompt_logprobs_across_chunks_equal_transformers(engine, smollm2_hf, ids):
    engine.flush_cache()
    out = within(120, engine.generate, ids, {"max_new_tokens": 0, "top_logprobs_num": 5, "temperature": 0},
                 logprob_start_len=0)
    assert out["finish_reason"] == "length" and out["token_ids"] == []
    check_logprobs(out["input_logprobs"], ids, 0, reference(smollm2_hf, ids)[0], 5)


def test_a_cached_prefix_is_recomputed_where_logprobs_are_needed(engine, smollm2_hf, ids, longer):
    engine.flush_cache()
    plain = within(120, engine.generate, longer, {"max_new_tokens": 4, "temperature": 0})
    assert within(120, engine.generate, ids, {"max_new_tokens": 1, "temperature": 0})["usage"]["cached_tokens"] > 0
    ref = reference(smollm2_hf, longer)[0]
    start = 21
    out = within(120, engine.generate, longer, {"max_new_tokens": 4, "temperature": 0, "top_logprobs_num": 2},
                 logprob_start_len=start)
    assert out["usage"]["cached_tokens"] == start - 1  # the cache serves every position before the needed ones
    check_logprobs(out["input_logprobs"], longer, start, ref, 2)
    assert out["token_ids"] == plain["token_ids"]
    full = within(120, engine.generate, longer, {"max_new_tokens": 0, "temperature": 0}, logprob_start_len=0)
    assert full["usage"]["cached_tokens"] == 0
    check_logprobs(full["input_logprobs"], longer, 0, ref, 0)


def test_pooled_hidden_states_equal_transformers(engine, smollm2_hf, ids, longer):
    hidden = reference(smollm2_hf, longer)[1]
    within(120, engine.generate, longer, {"max_new_tokens": 1, "temperature": 0})  # longer's prefix is cached
    last, mean = within(120, engine.embed, [longer, longer], "last", False), None
    assert torch.allclose(torch.tensor(last[0]), hidden[-1], atol=1e-4)
    mean = within(120, engine.embed, longer, "mean", True)
    assert torch.allclose(torch.tensor(mean), torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5)
    unit = within(120, engine.embed, longer)  # the defaults: last token, normalized
    assert torch.allclose(torch.tensor(unit), torch.nn.functional.normalize(hidden[-1], dim=0), atol=1e-5)


def test_nothing_is_left_holding_kv(engine):
    stats = engine.get_stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.kv_used_tokens == 0
