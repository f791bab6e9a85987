"""Greedy equivalence on the embedded SmolLM2-135M (CPU, float32) for every speculative decoder:
50 short prompts of mixed lengths in one continuously batched run (some joining while others
decode) give token for token the output of plain decoding; so do ten prompts answered under a JSON
schema (the output parses and has the schema's keys).

One scheduler runs the prompts with `speculative: false` (plain decoding, the reference), then
again with each decoder swapped in (n-gram, draft model, EAGLE): those runs find the prompts in
the radix cache. The prompts make the model copy
(code, quotes, counting), so the n-gram and draft-model decoders accept drafts; the draft model is
SmolLM2 cut to its first 6 of 30 layers (same vocabulary); the EAGLE head is untrained (it
exercises the machinery; its drafts are mostly rejected). JACKFIELD_TEST_SMOLLM2=0 skips the module.
"""
from __future__ import annotations

import json
import os

import pytest

from jackfield.testing.suites.speculative import pool_idle_problem, run_workload, spec_scheduler
from jackfield_plugins.spec.draft_model import DraftModelDecoder
from jackfield_plugins.spec.eagle import EagleDecoder
from jackfield_plugins.spec.ngram import NgramDecoder

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

TORCH_THREADS = 2  # a 135M model is large enough for intra-op threads to pay
SNIPPETS = ["x = a + b\ny = x * 2", "def f(n):\n    return n + 1", "for i in range(3):\n    print(i)",
            "total = sum(values)"]
QUOTES = ["To be, or not to be.", "All that glitters is not gold.", "I think, therefore I am."]
# 2 drafts per request: a verify forward of 50 requests is 150 tokens (the suite's CPU budget).
# float32 weights, also where llama-cpp-python makes `auto` pick `gguf`: ggml quantizes every matmul's
# input to int8 blocks, which turns the float rounding differences between a verify forward and a
# decode step (attention over other shapes) into whole quantization steps, so GGUF greedy outputs
# with and without speculation part at margins of ~0.1 (docs/performance.md).
SETTINGS = dict(max_running_requests=64, max_total_tokens=12000, speculative_num_draft_tokens=3,
                quantization="unquantized")


def prompts() -> list[str]:
    out = []
    for i in range(50):
        kind = i % 4
        if kind == 0:
            code = SNIPPETS[i % 4]
            out.append(f"Copy:\n{code}\nCopy:\n{code[:5]}")
        elif kind == 1:
            out.append(f"Repeat: \"{QUOTES[i % 3]}\" Again: \"")
        elif kind == 2:
            out.append("Count: " + ", ".join(str(j) for j in range(1, 3 + i % 6)))
        else:
            out.append(f"Q{i}: what is {i} plus {i}?")
    return out


@pytest.fixture(scope="module")
def jobs():
    from jackfield.loader.source import resolve_model
    from jackfield.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(str(resolve_model(None).path))
    return [(f"p{i}", tok.encode(p), 5 + i % 3, 0 if i < 40 else 2) for i, p in enumerate(prompts())]


SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                     "required": ["name", "age"], "additionalProperties": False})


@pytest.fixture(scope="module")
def json_jobs():
    """Ten prompts answered under a JSON schema (xgrammar): verify steps sample every draft node
    under the mask of its own path."""
    from jackfield.loader.source import resolve_model
    from jackfield.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(str(resolve_model(None).path))
    return [(f"j{i}", tok.encode(f"Person {i} as JSON, with name and age: "), 48, 0) for i in range(10)]


@pytest.fixture(scope="module")
def small_draft(tmp_path_factory) -> str:
    """SmolLM2 truncated to its first 6 layers: a cheap draft model with the target's vocabulary."""
    import json

    from safetensors.torch import load_file, save_file

    from jackfield.loader.source import resolve_model

    src, out = resolve_model(None).path, tmp_path_factory.mktemp("draft6")
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = 6
    (out / "config.json").write_text(json.dumps(config))
    weights = load_file(str(src / "model.safetensors"))
    keep = {k: v for k, v in weights.items() if ".layers." not in k or int(k.split(".layers.")[1].split(".")[0]) < 6}
    save_file(keep, str(out / "model.safetensors"))
    return str(out)


@pytest.fixture(scope="module")
def sched(tmp_path_factory):
    """One target for every decoder (each test swaps its decoder in), so the prompts are prefilled
    once and later runs find them in the radix cache."""
    s = spec_scheduler(NgramDecoder, None, str(tmp_path_factory.mktemp("ngram")), **SETTINGS)
    yield s
    s.close()


@pytest.fixture(scope="module")
def plain(sched, jobs, json_jobs):
    """Plain decoding: the 50 prompts, and the JSON-constrained ones."""
    out = run_workload(sched, jobs, speculative=False)
    out_json = run_workload(sched, json_jobs, speculative=False, json_schema=SCHEMA)
    assert sched.spec.stats.verify_steps == 0
    for tokens in out_json.values():
        assert set(json.loads(sched.tokenizer.decode(tokens))) == {"name", "age"}
    return out, out_json


def use_decoder(sched, cls, workdir: str, **settings) -> None:
    """Swap the scheduler's speculative decoder for `cls` built with `settings` (as the engine builds
    the selected one) on the same target, KV pool and radix cache."""
    from dataclasses import replace

    from jackfield.scheduler.spec_step import SpecController
    from jackfield.spec.setup import build_decoder

    runner = sched.runner
    setup = replace(runner.setup, settings=runner.setup.settings.model_copy(update=settings))
    decoder = build_decoder(setup, runner, cls)
    sched.spec = SpecController(sched, decoder, setup.settings)
    sched.releaser.on_leave = decoder.release


def check(plain: tuple, sched, jobs, json_jobs, name: str, accepts: bool) -> None:
    """The 50 prompts, then the constrained ones, with speculation: equal to plain decoding."""
    for want, out in ((plain[0], run_workload(sched, jobs)),
                      (plain[1], run_workload(sched, json_jobs, json_schema=SCHEMA))):
        diff = [rid for rid in want if out[rid] != want[rid]]
        assert not diff, f"{name}: {len(diff)} of {len(want)} differ, first {diff[0]}: {out[diff[0]]} vs {want[diff[0]]}"
    st = sched.spec.stats
    assert pool_idle_problem(sched) is None and st.verify_steps > 0
    if accepts:
        assert st.accepted > 0, f"{name} accepted no draft in {st.verify_steps} verify steps"


def test_ngram_equals_plain_with_radix_hits(sched, plain, jobs, json_jobs):
    before = sched.stats.cached_tokens
    check(plain, sched, jobs, json_jobs, "ngram", accepts=True)
    assert sched.stats.cached_tokens - before > 300  # the prompts came from the radix cache


@pytest.mark.parametrize("cls", [DraftModelDecoder, EagleDecoder], ids=lambda c: c.name)
def test_model_drafters_equal_plain(cls, sched, plain, jobs, json_jobs, small_draft, tmp_path):
    from jackfield.loader.source import resolve_model

    if cls is DraftModelDecoder:
        extra = {"speculative_draft_model_path": small_draft, "speculative_eagle_topk": 1, "speculative_num_steps": 3}
    else:
        extra = cls.kit_settings(str(resolve_model(None).path), str(tmp_path))
    use_decoder(sched, cls, str(tmp_path), **extra)
    check(plain, sched, jobs, json_jobs, cls.name, accepts=cls is DraftModelDecoder)
