"""LoRA on CUDA (marked gpu): the triton backend against torch_native and peft, with and without
decode CUDA graphs, on a tiny random Llama with peft-made adapters. (The kit runs both backends on
CUDA in tests/gpu/test_kit_cuda.py: bfloat16 and CUDA-graph replay included.)"""
from __future__ import annotations

import json

import pytest
import torch

from lora_harness import ALL, AdapterSpec, make_adapter, peft_greedy
from sched_harness import save_tiny_llama

pytestmark = pytest.mark.gpu
GREEDY = {"temperature": 0, "max_new_tokens": 16}
SPECS = [AdapterSpec("a0", 8, ("q_proj", "v_proj"), alpha=16, seed=1, strength=3.0),
         AdapterSpec("a1", 16, ALL, alpha=16, rslora=True, seed=2, strength=2.0),
         AdapterSpec("a2", 4, ("gate_proj", "up_proj", "down_proj"), alpha=8, seed=3, strength=3.0)]
PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [42, 8, 150, 3], list(range(3, 70))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path_factory.mktemp("tiny-gpu")
    save_tiny_llama(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))  # every run is 16 tokens
    (model_dir / "generation_config.json").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    adapters = tmp_path_factory.mktemp("tiny-gpu-adapters")
    paths = {s.name: make_adapter(model, adapters, s) for s in SPECS}
    return model_dir, model, paths


def run(tiny, backend: str, dtype: str, graphs: bool) -> list[list[int]]:
    """Every (adapter or base, prompt) in one batch over 2 slots; in float32 also one by one,
    asserting they agree (bfloat16 GEMMs round differently per batch shape)."""
    from jackfield import Engine

    model_dir, _, paths = tiny
    names = [s.name for s in SPECS] + [None]
    jobs = [(n, p) for n in names for p in PROMPTS]
    with Engine(model=str(model_dir), device="cuda", dtype=dtype, lora_backend=backend, max_loras=2,
                lora_paths=[f"{n}={p}" for n, p in paths.items()], disable_cuda_graph=not graphs,
                mem_fraction_static=0.3) as eng:
        assert eng.info.components["lora"]["name"] == backend
        batch = [o["token_ids"] for o in eng.generate([p for _, p in jobs], GREEDY, lora_path=[n for n, _ in jobs])]
        if dtype == "float32":
            alone = [eng.generate(p, GREEDY, lora_path=n)["token_ids"] for n, p in jobs]
            assert batch == alone, f"{backend} graphs={graphs}: a batch over 2 slots differs from solo runs"
    return batch


def test_float32_backends_and_graphs_match_peft(tiny):
    _, model, paths = tiny
    ref = [peft_greedy(model, paths.get(n), p, GREEDY["max_new_tokens"], [])
           for n in [s.name for s in SPECS] + [None] for p in PROMPTS]
    for backend in ("torch_native", "triton"):
        for graphs in (True, False):
            assert run(tiny, backend, "float32", graphs) == ref, f"{backend} graphs={graphs}"


def test_bfloat16_triton_agrees_with_torch_native(tiny):
    ours, ref = run(tiny, "triton", "bfloat16", True), run(tiny, "torch_native", "bfloat16", True)
    same = sum(a == b for x, y in zip(ours, ref) for a, b in zip(x, y))
    total = sum(len(x) for x in ref)
    assert same >= 0.9 * total, f"only {same} of {total} greedy tokens agree"
