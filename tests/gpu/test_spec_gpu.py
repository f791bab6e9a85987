"""Speculative decoding on the GPU: the Triton verify kernel (a draft-tree mask) against the float32
reference, the verify CUDA graph against the eager verify forward, and greedy output of each
decoder equal to plain decoding with CUDA graphs on (SmolLM2 in float32, where greedy paths do not
split on near-ties)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parent))

TREES = [[-1, 0, 0, 1, 1, 2, 4, 6], [-1, 0, 1, 2], [-1]]
CODE = "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    return width * height\n"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("layer_kw", [{}, {"sliding_window": 9}])
def test_triton_verify_matches_tree_reference(dtype, tol, layer_kw):
    from attn_harness import AttnProblem, relative_error

    from jackfield_plugins.attention.triton import TritonAttnBackend

    p = AttnProblem([37, 300, 5], [len(t) for t in TREES], 8, 2, 64, 16, dtype, "cuda", seed=3)
    backend, layer = TritonAttnBackend(p.runtime()), p.layer(**layer_kw)
    fb, q, k, v = p.verify_batch(backend, TREES)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    assert relative_error(out, p.tree_reference(q, fb, layer, TREES)) < tol


def _engine(**kw):
    from jackfield import Engine

    return Engine(device="cuda", dtype="float32", attention_backend="triton", max_running_requests=8,
                  cuda_graph_max_bs=8, speculative_load_aware=False, kv_cache_bytes=2 << 30, max_total_tokens=8192,
                  **kw)  # an explicit KV size: free GPU memory depends on other pytest-xdist workers


def _prompts(eng) -> list[list[int]]:
    tok = eng.tokenizer
    texts = [f"Copy this code exactly:\n{CODE}\nCopy:\n", "Repeat: the cat sat on the mat. Repeat: the cat",
             "List the numbers from 1 to 30: 1, 2, 3,"]
    return [tok.encode(t) for t in texts]


@pytest.fixture(scope="module")
def eagle_head(tmp_path_factory) -> str:
    from jackfield.loader.source import resolve_model
    from jackfield_plugins.spec.eagle_train import random_head

    return random_head(str(resolve_model(None).path), str(tmp_path_factory.mktemp("head")))


@pytest.mark.parametrize("case", ["ngram", "draft_model_chain", "eagle_tree", "eagle_chain"])
def test_greedy_equal_with_cuda_graphs(case, eagle_head):
    """Verify forwards from CUDA graphs; chains (topk 1) drafted from CUDA graphs too."""
    from jackfield.loader.source import resolve_model

    chain = {"speculative_eagle_topk": 1, "speculative_num_steps": 4}
    algo, extra = {"ngram": ("ngram", {}),
                   "draft_model_chain": ("draft_model", {"speculative_draft_model_path": str(resolve_model(None).path),
                                                          **chain}),
                   "eagle_tree": ("eagle", {"speculative_draft_model_path": eagle_head}),
                   "eagle_chain": ("eagle", {"speculative_draft_model_path": eagle_head, **chain})}[case]
    eng = _engine(speculative_algorithm=algo, **extra)
    try:
        runner = eng.loop.scheduler.runner
        assert runner.verify_graphs is not None and runner.graph_runner is not None
        if case.endswith("chain"):
            assert eng.loop.scheduler.spec.decoder.runner.chain_graphs is not None
        replays = []
        replay = runner.verify_graphs.replay
        runner.verify_graphs.replay = lambda fb: replays.append(fb.batch_size) or replay(fb)
        prompts = _prompts(eng)
        params = {"temperature": 0, "max_new_tokens": 48}
        plain = eng.generate(prompts, {**params, "speculative": False})
        spec = eng.generate(prompts, params)
        for a, b in zip(plain, spec):
            assert a["token_ids"] == b["token_ids"]
        assert replays, "no verify forward ran from a CUDA graph"
        if algo != "eagle":
            assert sum(r["spec"]["spec_accepted_tokens"] for r in spec) > 0
        if case == "draft_model_chain":  # the draft is the target: nearly every draft is accepted
            assert sum(r["spec"]["spec_accept_rate"] for r in spec) / len(spec) > 0.9
    finally:
        eng.shutdown()
        torch.cuda.empty_cache()
