"""Greedy equivalence on the embedded SmolLM2-135M (CPU, float32) for every speculative decoder:
50 prompts of mixed lengths in one continuously batched run (some joining while others decode),
with the radix cache on (a shared prefix), give token for token the output of plain decoding.

The prompts make the model copy (rewrite code with one change, repeat a quote), so the n-gram and
draft-model decoders accept drafts (the draft model is SmolLM2 cut to its first 6 of 30 layers, same
vocabulary); the EAGLE decoder runs an untrained head (it exercises the machinery: its drafts are
mostly rejected). Set JACKFIELD_TEST_SMOLLM2=0 to skip the module.
"""
from __future__ import annotations

import os

import pytest

from jackfield.testing.suites.speculative import pool_idle_problem, run_workload, spec_scheduler
from jackfield_plugins.spec.draft_model import DraftModelDecoder
from jackfield_plugins.spec.eagle import EagleDecoder
from jackfield_plugins.spec.ngram import NgramDecoder

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)

CODE = ["def area(w, h):\n    return w * h\n", "def greet(name):\n    print('Hello, ' + name)\n",
        "for i in range(10):\n    total += i * i\n", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"]
QUOTES = ["To be, or not to be, that is the question.", "All that glitters is not gold.",
          "The quick brown fox jumps over the lazy dog.", "I think, therefore I am."]
TORCH_THREADS = 2  # a 135M model is large enough for intra-op threads to pay
SYSTEM = "You are a careful assistant. Answer briefly and precisely.\n"


def prompts() -> list[str]:
    out = []
    for i in range(50):
        if i % 3 == 0:
            code = CODE[i % 4]
            out.append(f"Rewrite this code, renaming nothing:\n{code}\nRewritten:\n{code[:12]}")
        elif i % 3 == 1:
            q = QUOTES[i % 4]
            out.append(f"Quote: \"{q}\" Repeat the quote {1 + i % 3} times: \"{q}\" \"")
        else:
            out.append(SYSTEM + f"Question {i}: what is {i} plus {i * 7}?" + " Please explain." * (i % 5))
    return out


@pytest.fixture(scope="module")
def jobs():
    from jackfield.tokenizer.tokenizer import Tokenizer
    from jackfield.loader.source import resolve_model

    tok = Tokenizer.load(str(resolve_model(None).path))
    return [(f"p{i}", tok.encode(p), 8 + i % 5, 0 if i < 40 else 3) for i, p in enumerate(prompts())]



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
def plain(jobs, tmp_path_factory):
    sched = spec_scheduler(None, None, str(tmp_path_factory.mktemp("plain")), max_running_requests=64,
                           max_total_tokens=20000)
    out = run_workload(sched, jobs)
    sched.close()
    return out


@pytest.mark.parametrize("cls", [NgramDecoder, DraftModelDecoder, EagleDecoder], ids=lambda c: c.name)
def test_smollm2_greedy_equal_to_plain(cls, jobs, plain, small_draft, tmp_path):
    extra = {}
    if cls is DraftModelDecoder:
        extra = {"speculative_draft_model_path": small_draft, "speculative_eagle_topk": 2, "speculative_num_steps": 3}
    sched = spec_scheduler(cls, None, str(tmp_path), max_running_requests=64, max_total_tokens=20000, **extra)
    out = run_workload(sched, jobs)
    st = sched.spec.stats
    assert pool_idle_problem(sched) is None
    sched.close()
    diff = [rid for rid in plain if out[rid] != plain[rid]]
    assert not diff, f"{len(diff)} of 50 differ, first {diff[0]}: {out[diff[0]]} vs {plain[diff[0]]}"
    assert st.verify_steps > 0 and sched.stats.cached_tokens > 0
    if cls is not EagleDecoder:
        assert st.accepted > 0.3 * st.verify_steps, f"{cls.name} accepted {st.accepted} drafts in {st.verify_steps}"
