"""Every architecture against transformers, on tiny random checkpoints (CPU, float32).

For each ArchSpec (Llama untied/tied, Llama with llama3, linear and yarn rope scaling, Qwen2,
Qwen3, Mistral with a sliding window shorter than the sequences, Qwen2/Qwen3 with the window on
the layers from max_window_layers on only) the transformers model is built with a fixed seed,
every weight randomized (norms and biases too), and saved as safetensors.
jackfield then loads that directory and is driven through its paged KV cache:

* one EXTEND batch of three prompts of different lengths, logits at every prompt position;
* 20 batched greedy DECODE steps, logits at every step;
* page sizes 1 and 4, and a prefill split in two chunks over a cached prefix;

each compared with transformers' logits for the same token sequence (relative error < 1e-4).
At the Engine level, greedy `generate` must give the token ids of transformers' greedy
`generate`. Random tiny models can have near-ties between the two best tokens, where a 1e-6
difference legitimately flips argmax; the check asserts exact ids up to the first position whose
top-2 gap in transformers' logits is below 1e-3 (with these seeds there is none: the smallest
gap is ~2e-2, and the logit equality above covers the rest).
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from model_harness import (ARCH_SPECS, SPECS, VOCAB, PagedDriver, build_runner, checkpoint_cache, greedy_run, hf_logits,
                           rel_err, save_tiny_model, within)

TOL = 1e-4
DECODE_STEPS = 20
PROMPT_LENS = (5, 11, 17)
TIE_GAP = 1e-3
NAMES = [s.name for s in ARCH_SPECS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (checkpoint dir, transformers model); each built once per module, on first use."""
    return checkpoint_cache(tmp_path_factory, lambda name, directory: save_tiny_model(SPECS[name], directory))


def prompts_for(seed: int, lens=PROMPT_LENS) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lens]


def check_against_hf(hf, logits: list[torch.Tensor], seq: list[int], what: str) -> None:
    """`logits[j]` are our logits at position j of `seq`; per-position relative error < TOL."""
    ref = hf_logits(hf, seq)
    for pos, row in enumerate(logits):
        err = rel_err(row, ref[pos])
        assert err < TOL, f"{what}: position {pos}: relative error {err:.2e} vs transformers"


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("name", NAMES)
def test_paged_prefill_and_decode_match_transformers(tiny, name, page_size):
    directory, hf = tiny(name)
    runner = build_runner(directory, page_size=page_size)
    assert runner.attn_backend.name == "cpu"  # the CPU default: torch_native with the C++ decode kernel
    free_before = runner.allocator.available_size()
    driver = PagedDriver(runner)
    prompts = prompts_for(SPECS[name].seed)
    logits, seqs = greedy_run(driver, prompts, DECODE_STEPS)
    for i, (prompt, rows, seq) in enumerate(zip(prompts, logits, seqs)):
        assert len(rows) == len(prompt) + DECODE_STEPS and len(seq) == len(prompt) + DECODE_STEPS
        check_against_hf(hf, rows[:len(prompt)], seq, f"{name} prompt {i} prefill")
        check_against_hf(hf, rows, seq, f"{name} prompt {i} prefill+decode")
    driver.release()
    assert runner.allocator.available_size() == free_before
    runner.allocator.debug_check()


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("name", ["llama", "qwen3", "mistral_sliding"])
def test_chunked_prefill_over_a_cached_prefix(tiny, name, page_size):
    """A prompt computed as two extends (the second over a 7-token cached prefix, which is not
    page-aligned), next to a fresh prompt in the same batch, then decodes."""
    directory, hf = tiny(name)
    check_extend_over_a_cached_prefix(directory, hf, page_size, 99, 6, name)


def check_extend_over_a_cached_prefix(directory, hf, page_size: int, seed: int, steps: int, name: str) -> None:
    """Prompt 0 computed as two extends, the second over its first 7 tokens cached (not
    page-aligned), beside a fresh prompt 1 in the same batch, then `steps` greedy decodes: every
    position's logits against transformers'."""
    driver = PagedDriver(build_runner(directory, page_size=page_size))
    long, other = prompts_for(seed, (19, 9))
    first = driver.extend([long[:7]])
    second = driver.extend([long[7:], other], seqs=[0, None])  # sequence 0 continues, 1 is new
    rows0 = list(first[0]) + list(second[0])
    rows1 = list(second[1])
    seq0, seq1 = list(long), list(other)
    for _ in range(steps):
        nxt = [int(rows0[-1].argmax()), int(rows1[-1].argmax())]
        seq0.append(nxt[0])
        seq1.append(nxt[1])
        out = driver.decode(nxt)
        rows0.append(out[0])
        rows1.append(out[1])
    check_against_hf(hf, rows0, seq0, f"{name} prompt over a cached prefix")
    check_against_hf(hf, rows1, seq1, f"{name} fresh prompt beside it")
    driver.release()


def test_sliding_window_changes_the_logits(tiny):
    """Guards the Mistral case: its window (8) is shorter than the sequences, so attending over
    the full sequence would give clearly different logits."""
    directory, hf = tiny("mistral_sliding")
    assert hf.config.sliding_window == 8
    seq = prompts_for(7)[2] + prompts_for(8)[2]
    windowed = hf_logits(hf, seq)
    full_cfg = type(hf.config).from_dict({**hf.config.to_dict(), "sliding_window": None})
    full = type(hf)(full_cfg).eval()
    full.load_state_dict(hf.state_dict())
    unwindowed = hf_logits(full, seq)
    assert rel_err(windowed[:8], unwindowed[:8]) < 1e-5  # identical while inside the window
    assert rel_err(windowed[12:], unwindowed[12:]) > 1e-2
    runner = build_runner(directory)
    assert runner.model.model.layers[0].self_attn.info.sliding_window == 8


@pytest.mark.parametrize("name, windows", [("mistral_sliding", [8, 8, 8]), ("qwen2_sliding_mixed", [None, 8, 8]),
                                           ("qwen3_sliding_mixed", [None, None, 8]), ("qwen2", [None] * 3)])
def test_per_layer_sliding_windows(tiny, name, windows):
    directory, hf = tiny(name)
    runner = build_runner(directory)
    assert [layer.self_attn.info.sliding_window for layer in runner.model.model.layers] == windows


def test_qwen2_config_without_layer_types_derives_them_from_max_window_layers():
    """config.json files written before transformers 5 carry max_window_layers, not layer_types."""
    from jackfield.sdk.model_config import ModelConfig

    hf = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
          "num_attention_heads": 2, "num_hidden_layers": 4, "use_sliding_window": True, "sliding_window": 16,
          "max_window_layers": 3}
    config = ModelConfig.from_hf(hf)
    assert config.sliding_window == 16
    assert config.layer_types == ("full_attention",) * 3 + ("sliding_attention",)
    off = ModelConfig.from_hf({**hf, "use_sliding_window": False})
    assert off.sliding_window is None


def test_tied_checkpoint_has_no_lm_head(tiny):
    directory, hf = tiny("llama_tied")
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    runner = build_runner(directory)
    model = runner.model
    assert model.lm_head.tied_to is model.model.embed_tokens
    torch.testing.assert_close(model.model.embed_tokens.weight, hf.model.embed_tokens.weight, rtol=0, atol=0)
    directory, _ = tiny("llama")
    untied = build_runner(directory).model
    assert untied.lm_head.tied_to is None
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                      min_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_same_greedy(hf, prompt: list[int], ours: list[int], ref: list[int], what: str) -> None:
    """Exact ids up to the first near-tie of transformers' top-2 logits (see the module doc)."""
    logits = hf_logits(hf, prompt + ref)[len(prompt) - 1:-1]
    top2 = logits.topk(2, dim=-1).values
    gaps = (top2[:, 0] - top2[:, 1]).tolist()
    upto = next((i for i, g in enumerate(gaps) if g < TIE_GAP), len(ref))
    assert upto == len(ref), f"{what}: near-tie at generated token {upto} (gap {gaps[upto]:.1e}); pick another seed"
    assert ours[:upto] == ref[:upto], f"{what}: ours {ours} vs transformers {ref}"


@pytest.mark.parametrize("name", NAMES)
def test_engine_greedy_generate_equals_transformers_generate(tiny, name):
    from jackfield.engine import Engine

    directory, hf = tiny(name)
    prompts = prompts_for(SPECS[name].seed + 50)
    refs = [hf_greedy(hf, p, DECODE_STEPS) for p in prompts]
    params = {"temperature": 0, "max_new_tokens": DECODE_STEPS}
    with Engine(model=str(directory), device="cpu", dtype="float32", kv_cache_bytes=1 << 20,
                max_running_requests=4) as engine:
        assert engine.tokenizer is None  # tiny checkpoints carry no tokenizer: token ids in and out
        single = within(60, engine.generate, prompts[1], params)
        assert single["finish_reason"] == "length"
        assert single["usage"]["prompt_tokens"] == len(prompts[1])
        assert single["usage"]["completion_tokens"] == DECODE_STEPS
        assert_same_greedy(hf, prompts[1], single["token_ids"], refs[1], f"{name} single")
        batch = within(60, engine.generate, prompts, params)  # three prompts of different lengths together
        for i, (p, out, ref) in enumerate(zip(prompts, batch, refs)):
            assert len(out["token_ids"]) == DECODE_STEPS
            assert_same_greedy(hf, p, out["token_ids"], ref, f"{name} batch[{i}]")


@pytest.mark.parametrize("name", ["llama_llama3_rope", "mistral_sliding"])
def test_engine_page_size_4_and_small_chunks(tiny, name):
    """Page size 4 and a prefill chunk budget of 8 tokens (prompts are split across forwards)."""
    from jackfield.engine import Engine

    directory, hf = tiny(name)
    prompts = prompts_for(SPECS[name].seed + 60)
    refs = [hf_greedy(hf, p, DECODE_STEPS) for p in prompts]
    with Engine(model=str(directory), device="cpu", dtype="float32", kv_cache_bytes=1 << 20, page_size=4,
                chunked_prefill_size=8, max_running_requests=4) as engine:
        outs = within(60, engine.generate, prompts, {"temperature": 0, "max_new_tokens": DECODE_STEPS})
    for i, (p, out, ref) in enumerate(zip(prompts, outs, refs)):
        assert_same_greedy(hf, p, out["token_ids"], ref, f"{name} page 4 [{i}]")
