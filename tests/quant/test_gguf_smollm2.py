"""The embedded SmolLM2 (Q4_1 GGUF, Q8_0 embedding) served by `gguf` (the default for a GGUF file)
against the same file dequantized (`unquantized`), greedy, 32 new tokens on a fixed prompt set.

The two are not bit-identical: ggml multiplies int8-quantized activations (one scale per block of
32 values, ~0.5% relative error per matmul), as llama.cpp does, while the dequantized path
multiplies float32. So the test checks what that explains: each greedy continuation equals the
float path's until a step where the float path's own top two candidates are nearly tied (its
logprob gap to the token `gguf` chose is below GAP), and on average most of the 32 tokens agree.
A wrong block layout, a wrong row order or a missed q/k unpermute makes gibberish from the first
token and fails both. Set JACKFIELD_TEST_SMOLLM2=0 to skip the module.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jackfield_plugins.quant.gguf import GGUF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from model_harness import SMOLLM2_PROMPTS  # noqa: E402

if os.environ.get("JACKFIELD_TEST_SMOLLM2", "1").lower() in ("0", "off", "false", "no"):
    pytest.skip("JACKFIELD_TEST_SMOLLM2 is off", allow_module_level=True)
pytestmark = pytest.mark.skipif(not GGUF.availability().ok, reason=GGUF.availability().reason)

NEW_TOKENS = 32
PROMPTS = SMOLLM2_PROMPTS + [
    "The three primary colors are",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
]
GAP = 0.5  # nats (measured: at most 0.19): a divergence is explained when the float path's top-1 beats gguf's token by less
MIN_MEAN_AGREED = 12  # of 32 tokens, averaged over the prompts
# The chat check's question. "What is the capital of France?" is a near tie at the first token: the
# float path prefers "The" to "L" by 0.08 nats, and gguf, like llama.cpp itself (llama-cpp-python on
# the same file), starts "L'Étoile, ..." (measured on this model: gap 0.13 nats the other way). This
# wording leads both paths to "The capital city of France is Paris." (first-token margin 0.7 nats on
# both; the next three tokens 3.9 or more).
QUESTION = "Name the capital city of France."


def generate_all(quantization: str, logprobs: bool) -> tuple[str, list[dict]]:
    from jackfield import Engine

    params = {"temperature": 0, "max_new_tokens": NEW_TOKENS}
    if logprobs:
        params.update(logprobs=True, top_logprobs_num=20)
    with Engine(quantization=quantization) as engine:
        chosen = engine.loop.scheduler.runner.setup.choices["quantization"].name
        outs = [engine.generate(engine.tokenizer.encode(p), params) for p in PROMPTS]
        outs.append(engine.chat([{"role": "user", "content": QUESTION}],
                                {"temperature": 0, "max_new_tokens": 16}))
    return chosen, outs


@pytest.fixture(scope="module")
def runs():
    return {"gguf": generate_all("auto", logprobs=False), "float": generate_all("unquantized", logprobs=True)}


def test_default_is_gguf_and_answers_paris(runs):
    chosen, outs = runs["gguf"]
    assert chosen == "gguf"
    assert PROMPTS[0] == "The capital of France is" and "Paris" in outs[0]["text"]
    assert "Paris" in outs[-1]["text"]


def test_greedy_agrees_with_the_dequantized_path_until_a_near_tie(runs):
    _, ours = runs["gguf"]
    chosen, ref = runs["float"]
    assert chosen == "unquantized"
    agreed = []
    for prompt, a, b in zip(PROMPTS, ours, ref):
        a_ids, b_ids = a["token_ids"], b["token_ids"]
        n = next((i for i, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), min(len(a_ids), len(b_ids)))
        agreed.append(n)
        if n == len(a_ids) == len(b_ids):
            continue
        assert n < len(a_ids) and n < len(b_ids), f"{prompt!r}: one side stopped at {n} while the other went on"
        step = b["logprobs"][n]
        top = dict(step["top_logprobs"])
        assert a_ids[n] in top, f"{prompt!r}: gguf's token {a_ids[n]} at step {n} is not in the float path's top 20"
        gap = step["logprob"] - top[a_ids[n]]
        assert gap < GAP, f"{prompt!r}: at step {n} the float path prefers its token by {gap:.2f} nats"
    assert sum(agreed) / len(agreed) >= MIN_MEAN_AGREED, agreed
