"""MoE and MLA architectures against transformers on tiny random checkpoints (CPU, float32).

For each of Mixtral, Qwen3-MoE, Qwen2-MoE, DeepSeek-V2 and DeepSeek-V3 (moe_harness.MOE_SPECS), run
through the paged KV cache (page size 4) with the torch_native MoE dispatcher and the reference
attention backend the selection picks (torch_native, or torch_native_mla for the latent layout):

* three prompts prefilled in one batch, then 32 batched greedy decode steps: logits at every
  position match transformers' (relative error < 1e-4);
* a prompt computed as two extends over a cached, non-page-aligned prefix next to a fresh prompt
  (for MLA this is the absorbed extend; a fresh prefill takes the expanded path);
* the Engine's greedy `generate` of a batch equals transformers' greedy `generate` token for token,
  and so does a second batch whose prompts extend the first ones, served from the radix cache.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from model_harness import PagedDriver, VOCAB, build_runner, checkpoint_cache, greedy_run, hf_logits, rel_err, within
from moe_harness import MOE, MOE_SPECS, save_tiny_moe
from test_models_vs_hf import (assert_same_greedy, check_against_hf, check_extend_over_a_cached_prefix, hf_greedy,
                               prompts_for)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scheduler"))
from sched_harness import one_torch_thread  # noqa: E402,F401 (an autouse fixture)

STEPS = 32
NAMES = [s.name for s in MOE_SPECS]
MLA_NAMES = ["deepseek_v2", "deepseek_v3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return checkpoint_cache(tmp_path_factory, lambda name, directory: save_tiny_moe(MOE[name], directory))


@pytest.mark.parametrize("name", NAMES)
def test_paged_prefill_and_decode_match_transformers(tiny, name):
    directory, hf = tiny(name)
    runner = build_runner(directory, page_size=4)
    assert runner.attn_backend.name == ("torch_native_mla" if name in MLA_NAMES else "cpu")
    assert runner.kv_pool.layout.kind == ("latent" if name in MLA_NAMES else "per_head")
    free = runner.allocator.available_size()
    driver = PagedDriver(runner)
    prompts = prompts_for(MOE[name].seed)
    logits, seqs = greedy_run(driver, prompts, STEPS)
    for i, (rows, seq) in enumerate(zip(logits, seqs)):
        check_against_hf(hf, rows, seq, f"{name} prompt {i}")
    driver.release()
    assert runner.allocator.available_size() == free


@pytest.mark.parametrize("name", MLA_NAMES + ["qwen3_moe"])
def test_extend_over_a_cached_prefix(tiny, name):
    directory, hf = tiny(name)
    check_extend_over_a_cached_prefix(directory, hf, 4, 77, 4, name)


@pytest.mark.parametrize("name, overlap", [(n, False) for n in NAMES] + [("deepseek_v3", True)])
def test_engine_greedy_and_radix_cache_equal_transformers(tiny, name, overlap):
    """Chunks of 16 tokens (prompts span chunks and mix with decodes), page size 4, the radix cache;
    one MLA case also runs the overlap scheduler (off by default on CPU)."""
    from jackfield.engine import Engine

    directory, hf = tiny(name)
    prompts = prompts_for(MOE[name].seed + 50)
    longer = [p + prompts_for(MOE[name].seed + 70, (6,))[0] for p in prompts]  # share each prompt as a prefix
    params = {"temperature": 0, "max_new_tokens": STEPS}
    with Engine(model=str(directory), device="cpu", dtype="float32", kv_cache_bytes=1 << 20, page_size=4,
                chunked_prefill_size=16, max_running_requests=4, disable_overlap_schedule=not overlap) as engine:
        first = within(120, engine.generate, prompts, params)
        second = within(120, engine.generate, longer, params)
    for what, batch, outs in (("batch", prompts, first), ("radix", longer, second)):
        for i, (prompt, out) in enumerate(zip(batch, outs)):
            assert len(out["token_ids"]) == STEPS
            assert_same_greedy(hf, prompt, out["token_ids"], hf_greedy(hf, prompt, STEPS), f"{name} {what}[{i}]")
    assert all(out["usage"]["cached_tokens"] > 0 for out in second), [o["usage"] for o in second]


def test_moe_layers_follow_the_config(tiny):
    """Qwen3-MoE's mlp_only_layers=[1] is a dense MLP; DeepSeek's first_k_dense_replace=1 too."""
    from jackfield.sdk.layers import GatedMLP, MLAAttention, SparseMoE

    layers = build_runner(tiny("qwen3_moe")[0]).model.model.layers
    assert [type(layer.mlp) for layer in layers] == [SparseMoE, GatedMLP, SparseMoE]
    layers = build_runner(tiny("deepseek_v3")[0]).model.model.layers
    assert [type(layer.mlp) for layer in layers] == [GatedMLP, SparseMoE, SparseMoE]
    assert all(isinstance(layer.self_attn, MLAAttention) for layer in layers)
    assert layers[1].mlp.gate.e_score_correction_bias.abs().sum() > 0


def test_deepseek_skips_checkpoint_layers_past_the_last(tiny, tmp_path):
    """DeepSeek-V3 checkpoints carry a multi-token-prediction layer (61) the model does not run."""
    import shutil

    from safetensors.torch import load_file, save_file

    directory, hf = tiny("deepseek_v3")
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    weights = load_file(str(directory / "model.safetensors"))
    weights["model.layers.3.self_attn.kv_b_proj.weight"] = torch.zeros(4, 4)  # layer 3 of a 3-layer model
    save_file(weights, str(tmp_path / "model.safetensors"))
    seq = prompts_for(3, (9,))[0]
    logits = PagedDriver(build_runner(tmp_path)).extend([seq])[0]
    check_against_hf(hf, list(logits), seq, "deepseek_v3 with an extra checkpoint layer")


def test_routing_changes_with_the_correction_bias(tiny):
    """Guards the V3 case: the bias must steer the choice, so zeroing it changes the logits."""
    directory, hf = tiny("deepseek_v3")
    seq = prompts_for(5, (24,))[0]
    ref = hf_logits(hf, seq)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    try:
        with torch.no_grad():
            for name, buf in hf.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    buf.zero_()
        assert rel_err(hf_logits(hf, seq), ref) > 1e-3
    finally:
        hf.load_state_dict(state)
    assert rel_err(hf_logits(hf, seq), ref) == 0.0
