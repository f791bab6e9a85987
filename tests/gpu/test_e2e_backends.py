"""End to end on the 1B-shaped dummy model (bf16): torch_native, triton and flashinfer agree, and
CUDA-graph replay equals eager execution.

bf16 kernels sum in different orders, and dummy weights make the next-token distribution nearly
flat, so two greedy paths may split when two logits nearly tie. The check walks both 64-token paths
step by step: while the tokens agree, the chosen token's logprob must agree within 0.05; at the
first split, each side's token must be in the other's top-5 within 0.05 of its best logprob (a
near-tie, not a wrong result); after a split the prefixes differ and comparison stops.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.gpu
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "configs", "llama-1b.json")
PROMPTS = [[128000 + i for i in range(1)] + list(range(1000, 1000 + n)) for n in (17, 64, 5)]


def _run(backend: str, model: str = CONFIG, prompts=PROMPTS, **kw) -> list[dict]:
    from jackfield import Engine

    eng = Engine(model=model, load_format="dummy", attention_backend=backend, max_total_tokens=32768,
                 max_running_requests=8, cuda_graph_max_bs=8, seed=1, **kw)
    try:
        return eng.generate(prompts, {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True, "logprobs": True,
                                      "top_logprobs_num": 5})
    finally:
        eng.shutdown()
        del eng
        torch.cuda.empty_cache()


def _near_top(lp: dict, token: int, tol: float = 0.05) -> bool:
    top = dict(lp["top_logprobs"])
    return token in top and lp["logprob"] - top[token] < tol


def _compare(a: list[dict], b: list[dict], tol: float = 0.05) -> int:
    """Returns the number of steps compared before the first (near-tie) split, over all prompts;
    logprobs may differ by `tol`, and a split must be between tokens within `tol` of the top."""
    agreed = 0
    for ra, rb in zip(a, b):
        for step, (la, lb) in enumerate(zip(ra["logprobs"], rb["logprobs"])):
            if la["token_id"] != lb["token_id"]:
                assert _near_top(la, lb["token_id"], tol) and _near_top(lb, la["token_id"], tol), (step, la, lb)
                break
            assert abs(la["logprob"] - lb["logprob"]) < tol, (step, la, lb)
            agreed += 1
    return agreed


@pytest.fixture(scope="module")
def reference():
    return _run("torch_native")


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_backend_matches_torch_native(backend, reference):
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    reg = build_registry(*load_plugins())
    avail = reg.candidates("attention", backend)[0].availability()
    if not avail.ok:
        pytest.skip(f"{backend}: {avail.reason}")
    _compare(_run(backend), reference)


def test_flashinfer_prefill_with_triton_decode_matches_torch_native(reference):
    """The per-mode pair the H100 offline benchmark runs: FlashInfer prefill, Triton decode (graphs)."""
    pytest.importorskip("flashinfer")
    _compare(_run("triton", prefill_attention_backend="flashinfer", decode_attention_backend="triton"), reference)


def test_cuda_graph_replay_equals_eager():
    graph = _run("triton")
    eager = _run("triton", disable_cuda_graph=True)
    assert _compare(graph, eager) >= 32


def test_torch_compile_matches_eager(tmp_path):
    """--enable-torch-compile: the decode graphs capture a torch.compile'd forward (Inductor kernels
    around our Triton kernels). A 2-layer model keeps compilation short; the three prompts replay
    the batch-4 graph."""
    import json

    with open(CONFIG) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
               num_key_value_heads=2, head_dim=64)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))

    def run(**kw):
        from jackfield import Engine

        eng = Engine(model=str(path), load_format="dummy", attention_backend="triton", max_total_tokens=8192,
                     max_running_requests=4, cuda_graph_max_bs=4, seed=1, **kw)
        try:
            return eng.generate(PROMPTS, {"temperature": 0, "max_new_tokens": 32, "ignore_eos": True,
                                          "logprobs": True, "top_logprobs_num": 5})
        finally:
            eng.shutdown()
            del eng
            torch.cuda.empty_cache()

    assert _compare(run(enable_torch_compile=True), run()) >= 48
