"""LoRA on the embedded SmolLM2 (its float32 safetensors conversion) against `peft`, on CPU.

Adapters are made by peft in the test (random non-zero A and B, ranks 2 to 16, several target sets,
lora_alpha / r and rsLoRA scaling). For each: jackfield's logits at every prompt position equal
`PeftModel`'s, and greedy tokens equal `PeftModel.generate`'s. One batch mixing four adapters and the
base model gives every request the tokens it gets alone.

Set JACKFIELD_TEST_SMOLLM2=0 to skip the module.
"""
from __future__ import annotations

import os

import pytest
import torch

from lora_harness import ALL, AdapterSpec, make_adapter, peft_greedy, peft_logits
from model_harness import PagedDriver, rel_err, within

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

NEW_TOKENS = 12
SPECS = [AdapterSpec("qv8", 8, ("q_proj", "v_proj"), alpha=16, seed=1),
         AdapterSpec("all4rs", 4, ALL, alpha=8, rslora=True, seed=2, strength=0.5),
         AdapterSpec("mlp16", 16, ("gate_proj", "up_proj", "down_proj"), alpha=32, seed=3, strength=0.5),
         AdapterSpec("ko2", 2, ("k_proj", "o_proj"), alpha=2, seed=4)]
PROMPTS = ["The capital of France is", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def base_dir():
    from jackfield.loader.source import resolve_model

    return resolve_model(None).path  # the GGUF's float32 safetensors conversion


@pytest.fixture(scope="module")
def hf_model(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(hf_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("smollm2-adapters")
    return {spec.name: make_adapter(hf_model, root, spec) for spec in SPECS}


@pytest.fixture(scope="module")
def engine(adapters):
    from jackfield import Engine

    with Engine(lora_paths=[f"{n}={p}" for n, p in adapters.items()], max_loras=4) as eng:
        yield eng


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[list[int]]:
    return [engine.tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def solo(engine, prompt_ids) -> dict:
    greedy = {"temperature": 0, "max_new_tokens": NEW_TOKENS}
    return {(name, i): within(120, engine.generate, ids, greedy, lora_path=name)["token_ids"]
            for name in [s.name for s in SPECS] + [None] for i, ids in enumerate(prompt_ids)}


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_logits_equal_peft(engine, hf_model, adapters, prompt_ids, name):
    """Every position's logits, prefill and three decode steps, in one forward each."""
    runner = engine.loop.scheduler.runner
    lora = runner.lora
    slot = lora.pool.acquire(lora.adapters[name], keep=set())
    ids = prompt_ids[0]
    driver = PagedDriver(runner)
    try:
        rows = list(driver.extend([ids], lora_slots=(slot,))[0])
        tokens = list(ids)
        for _ in range(3):
            tokens.append(int(rows[-1].argmax()))
            rows.append(driver.decode([tokens[-1]], lora_slots=(slot,))[0])
    finally:
        driver.release()
    ours = torch.stack(rows)
    ref = peft_logits(hf_model, adapters[name], tokens)
    base = peft_logits(hf_model, None, tokens)
    assert rel_err(ref, base) > 1e-2, f"adapter {name} barely changes the logits; the comparison proves little"
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("name", [s.name for s in SPECS] + [None])
def test_greedy_tokens_equal_peft(engine, hf_model, adapters, prompt_ids, solo, name):
    eos = list(engine.info.model_config.eos_token_ids)
    for i, ids in enumerate(prompt_ids):
        ref = peft_greedy(hf_model, adapters.get(name), ids, NEW_TOKENS, eos)
        assert solo[name, i] == ref, f"adapter {name}, prompt {i}"


def test_adapters_give_different_tokens(solo, prompt_ids):
    outputs = {tuple(tuple(solo[name, i]) for i in range(len(prompt_ids))) for name in [s.name for s in SPECS] + [None]}
    assert len(outputs) >= 4


def test_mixed_batch_equals_each_alone(engine, prompt_ids, solo):
    names = [s.name for s in SPECS] + [None]
    jobs = [(n, i) for i in range(len(prompt_ids)) for n in names]
    outs = within(120, engine.generate, [prompt_ids[i] for _, i in jobs], {"temperature": 0, "max_new_tokens": NEW_TOKENS},
                  lora_path=[n for n, _ in jobs])
    for (n, i), out in zip(jobs, outs):
        assert out["token_ids"] == solo[n, i], f"adapter {n}, prompt {i} in a mixed batch"
