"""Tensor and expert parallelism on 2 GPUs (NCCL, decode CUDA graphs on): TP 2 equals TP 1's greedy
output over 64 tokens on the 1B- and 8B-shaped dummy models (the bf16 near-tie rule of
test_e2e_backends), and an MoE model at TP 2 / EP 2 equals its one-GPU run. Dummy weights are drawn
whole on every rank and cut, so TP 2 runs the same model as TP 1."""
import os

import pytest
import torch

from test_e2e_backends import PROMPTS, _compare, _run as run_backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                                  reason="needs 2 CUDA devices")]
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "configs")


def _run(config: str, prompts=PROMPTS, **kw) -> list[dict]:
    return run_backend("triton", os.path.join(CONFIGS, config), prompts, **kw)


@pytest.mark.parametrize("config", ["llama-1b.json", "llama-3.1-8b.json"])
def test_tp2_matches_tp1(config):
    one = _run(config)
    two = _run(config, tp_size=2)
    assert _compare(one, two) >= 32, "TP 2 split from TP 1 too early for a near-tie"


def test_ep2_matches_one_gpu():
    prompts = [[151643] + list(range(1000, 1000 + n)) for n in (17, 5)]
    one = _run("qwen3-30b-a3b.json", prompts, moe_backend="triton")
    two = _run("qwen3-30b-a3b.json", prompts, moe_backend="triton", tp_size=2, ep_size=2)
    assert _compare(one, two) >= 16
