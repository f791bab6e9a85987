"""The embedded SmolLM2-135M (GGUF) end to end through the offline Engine, on CPU in float32
(`quantization=unquantized`: the file dequantized; tests/quant/test_gguf_smollm2.py covers the default `gguf`).

One Engine and one transformers reference (loaded by transformers' own GGUF reader from the same
file, float32) serve the whole module. Greedy generations must equal transformers' greedy
`generate` token for token; if they ever part, the test accepts it only where transformers' two
best logits are within 1e-3 of each other (a genuine near-tie) and compares the tokens before it.

Set JACKFIELD_TEST_SMOLLM2=0 to skip the module.
"""
from __future__ import annotations

import asyncio
import os

import pytest
import torch

from model_harness import SMOLLM2_PROMPTS, hf_logits, load_smollm2_hf, within

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

NEW_TOKENS = 32
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS}
TIE_GAP = 1e-3
PROMPTS = SMOLLM2_PROMPTS
STORY = 2  # index of the prompt whose continuation runs the full 32 tokens with plain words


@pytest.fixture(scope="module")
def engine():
    from jackfield.engine import Engine

    with Engine(quantization="unquantized") as eng:  # the float path, as transformers computes it
        yield eng


@pytest.fixture(scope="module")
def hf_model(smollm2_hf_dir):
    return load_smollm2_hf(smollm2_hf_dir)


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[list[int]]:
    return [engine.tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_greedy(hf_model, engine, prompt_ids) -> list[list[int]]:
    eos = list(engine.info.model_config.eos_token_ids)
    refs = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        with torch.no_grad():
            out = hf_model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW_TOKENS,
                                    eos_token_id=eos, pad_token_id=eos[0])
        refs.append(out[0, len(ids):].tolist())
    return refs


@pytest.fixture(scope="module")
def solo(engine, prompt_ids) -> list[dict]:
    """Each prompt generated alone, greedy."""
    return [within(120, engine.generate, ids, GREEDY) for ids in prompt_ids]


def assert_greedy_equal(hf_model, prompt: list[int], ours: list[int], ref: list[int], what: str) -> None:
    diverge = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    if diverge is None:
        assert len(ours) == len(ref), f"{what}: {len(ours)} tokens vs transformers' {len(ref)}\n{ours}\n{ref}"
        return
    logits = hf_logits(hf_model, prompt + ref[:diverge])[-1]
    top2 = logits.topk(2)
    gap = float(top2.values[0] - top2.values[1])
    assert gap < TIE_GAP and ours[diverge] in top2.indices.tolist(), (
        f"{what}: generated token {diverge} is {ours[diverge]}, transformers {ref[diverge]} "
        f"(top-2 gap {gap:.2e}, not a tie)\nours {ours}\nhf   {ref}")


def test_greedy_generation_equals_transformers(hf_model, prompt_ids, hf_greedy, solo):
    for i, (ids, ref, out) in enumerate(zip(prompt_ids, hf_greedy, solo)):
        assert out["usage"]["prompt_tokens"] == len(ids)
        assert_greedy_equal(hf_model, ids, out["token_ids"], ref, f"prompt {i} {PROMPTS[i]!r}")
    full = [len(o["token_ids"]) == NEW_TOKENS and o["finish_reason"] == "length" for o in solo]
    assert sum(full) >= 3, "most prompts should run the full 32 tokens"


def test_text_prompt_equals_token_prompt(engine, solo):
    out = within(120, engine.generate, PROMPTS[STORY], GREEDY)
    assert out["token_ids"] == solo[STORY]["token_ids"]
    assert out["text"] == solo[STORY]["text"]
    assert out["text"] == engine.tokenizer.decode(out["token_ids"], skip_special_tokens=True)
    assert len(out["text"]) > 40


def test_chat_knows_the_capital_of_france(engine):
    out = within(120, engine.chat, [{"role": "user", "content": "What is the capital of France?"}],
                 {"temperature": 0, "max_new_tokens": 16})
    assert "Paris" in out["text"], out


def test_a_batch_of_mixed_lengths_equals_each_prompt_alone(engine, prompt_ids, solo):
    lengths = sorted(len(ids) for ids in prompt_ids)
    assert lengths[0] * 3 < lengths[-1]  # the batch really mixes short and long prompts
    batch = within(180, engine.generate, prompt_ids, GREEDY)
    for i, (b, s) in enumerate(zip(batch, solo)):
        assert b["token_ids"] == s["token_ids"], f"prompt {i}: batched {b['token_ids']} vs alone {s['token_ids']}"
        assert b["text"] == s["text"] and b["finish_reason"] == s["finish_reason"]


def _stream(engine, prompt, params) -> list[dict]:
    async def collect():
        return [chunk async for chunk in engine.generate_stream(prompt, params)]

    return within(120, asyncio.run, collect())


@pytest.mark.parametrize("which", [STORY, 1])
def test_streamed_chunks_concatenate_to_the_generated_text(engine, solo, which):
    chunks = _stream(engine, PROMPTS[which], GREEDY)
    assert len(chunks) >= 2
    assert all(not c["finished"] for c in chunks[:-1]) and chunks[-1]["finished"]
    assert "".join(c["text"] for c in chunks) == solo[which]["text"]
    assert [t for c in chunks for t in c["token_ids"]] == solo[which]["token_ids"]
    assert chunks[-1]["finish_reason"] == solo[which]["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == len(solo[which]["token_ids"])


def _stop_word(text: str) -> tuple[str, int]:
    """A word from the middle of `text` (with its leading space) and where it first occurs."""
    words = text.split()
    stop = " " + words[len(words) // 2]
    return stop, text.index(stop)


def test_stop_string_cuts_the_text(engine, solo):
    full = solo[STORY]["text"]
    stop, at = _stop_word(full)
    assert at > 0
    out = within(120, engine.generate, PROMPTS[STORY], {**GREEDY, "stop": [stop]})
    assert out["finish_reason"] == "stop"
    assert out["finish_detail"] == stop
    assert out["text"] == full[:at]
    assert len(out["token_ids"]) < NEW_TOKENS
    assert out["token_ids"] == solo[STORY]["token_ids"][:len(out["token_ids"])]
    kept = within(120, engine.generate, PROMPTS[STORY], {**GREEDY, "stop": stop, "no_stop_trim": True})
    assert kept["text"] == full[:at + len(stop)] and kept["finish_reason"] == "stop"
    chunks = _stream(engine, PROMPTS[STORY], {**GREEDY, "stop": [stop]})
    assert "".join(c["text"] for c in chunks) == full[:at]
    assert chunks[-1]["finish_reason"] == "stop"


def test_n2_sampling_with_seeds(engine):
    prompt = PROMPTS[STORY]
    params = {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 12}
    first = within(120, engine.generate, prompt, {**params, "seed": 1234})
    assert len(first["choices"]) == 2
    for choice in first["choices"]:
        assert len(choice["token_ids"]) == 12 and choice["finish_reason"] == "length" and choice["text"]
    assert first["usage"]["completion_tokens"] == 24
    assert first["token_ids"] == first["choices"][0]["token_ids"]
    assert first["choices"][0]["token_ids"] != first["choices"][1]["token_ids"]  # choice j uses seed + j
    again = within(120, engine.generate, prompt, {**params, "seed": 1234})
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in first["choices"]]
    other = within(120, engine.generate, prompt, {**params, "seed": 4321})
    assert [c["token_ids"] for c in other["choices"]] != [c["token_ids"] for c in first["choices"]]
    unseeded = within(120, engine.generate, prompt, {"n": 2, "temperature": 1.0, "max_new_tokens": 12})
    a, b = (c["token_ids"] for c in unseeded["choices"])
    assert len(a) == len(b) == 12 and a != b  # independent draws
