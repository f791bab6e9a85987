"""Test harness for tensor parallelism on the CPU (gloo): a tiny random Llama whose 4 query heads
split at TP 2 and 4 (2 KV heads: split at TP 2, replicated at TP 4) and whose vocabulary (162) is
not a multiple of 4 (the last rank's vocab shard is padded), and transformers' greedy tokens and
log-probabilities on it."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from model_harness import ArchSpec, save_tiny_model  # noqa: E402

SPEC = ArchSpec("llama_tp", "LlamaConfig", {"tie_word_embeddings": False, "vocab_size": 162}, seed=11)
PROMPT = [5, 17, 42, 9, 100, 3, 77, 150, 12, 61]
NEW_TOKENS = 8
TOP = 5
ENGINE = {"device": "cpu", "dtype": "float32", "kv_cache_bytes": 1 << 20, "max_running_requests": 4}


def reference(model) -> dict:
    """transformers' greedy continuation of PROMPT, with the log-probabilities of every position."""
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False)
        seq = out[0].tolist()
        logprobs = torch.log_softmax(model(out).logits[0].float(), dim=-1)
    return {"tokens": seq[len(PROMPT):], "logprobs": logprobs, "seq": seq}


def save_model(directory: Path):
    return save_tiny_model(SPEC, directory)


def run(engine) -> dict:
    """Greedy generation with per-token and prompt log-probabilities (the prompt readout runs on
    every rank, as the decode and prefill forwards do)."""
    return engine.generate(PROMPT, {"max_new_tokens": NEW_TOKENS, "temperature": 0, "logprobs": True,
                                    "top_logprobs_num": TOP}, logprob_start_len=0)


def logprob_table(result) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt logprobs of tokens 1.., chosen logprobs of the generated tokens) of a `run` result."""
    prompt = torch.tensor([e["logprob"] for e in result["input_logprobs"][1:]])
    chosen = torch.tensor([e["logprob"] for e in result["logprobs"]])
    return prompt, chosen


def expected_table(ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
    lp, seq, n = ref["logprobs"], ref["seq"], len(PROMPT)
    prompt = torch.stack([lp[i - 1, seq[i]] for i in range(1, n)])
    chosen = torch.stack([lp[i - 1, seq[i]] for i in range(n, len(seq))])
    return prompt, chosen


def save_moe(name: str, directory: Path):
    """A tiny MoE of tests/engine/moe_harness.py (8 experts, 4 heads over 2 KV heads)."""
    from moe_harness import MOE, save_tiny_moe

    return save_tiny_moe(MOE[name], directory)
