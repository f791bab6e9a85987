"""MoE and MLA models on the GPU: tiny DeepSeek-V2/V3 and Qwen3-MoE checkpoints through the Engine on
CUDA (float32, CUDA graphs, overlap scheduler, radix cache, chunked prefill, the triton MoE
dispatcher, triton_mla) give transformers' greedy tokens. (The latent backends' kit on CUDA, the
MLA suite, is tests/gpu/test_kit_cuda.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))


@pytest.mark.parametrize("name, attention", [("deepseek_v2", "triton_mla"), ("deepseek_v3", "triton_mla"),
                                             ("qwen3_moe", "triton")])
def test_engine_on_cuda_gives_transformers_greedy_tokens(tmp_path, name, attention):
    from jackfield.engine import Engine
    from moe_harness import MOE, save_tiny_moe
    from test_models_vs_hf import assert_same_greedy, hf_greedy, prompts_for

    hf = save_tiny_moe(MOE[name], tmp_path)
    prompts = prompts_for(MOE[name].seed + 80)
    longer = [p + [7, 8, 9, 10, 11] for p in prompts]
    params = {"temperature": 0, "max_new_tokens": 32}
    with Engine(model=str(tmp_path), device="cuda", dtype="float32", attention_backend=attention, moe_backend="triton",
                max_total_tokens=4096, max_running_requests=4, cuda_graph_max_bs=4, chunked_prefill_size=16,
                page_size=4) as engine:
        assert engine.info.components["moe"]["name"] == "triton"
        outs = engine.generate(prompts, params) + engine.generate(longer, params)
        alone = engine.generate([prompts[0] + [12]], params)  # batch 1: the fused norm + router kernel
    for i, (prompt, out) in enumerate(zip(prompts + longer + [prompts[0] + [12]], outs + alone)):
        assert_same_greedy(hf, prompt, out["token_ids"], hf_greedy(hf, prompt, 32), f"{name} [{i}]")
    assert all(o["usage"]["cached_tokens"] > 0 for o in outs[len(prompts):])
