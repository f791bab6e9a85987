"""Speculative decoding on the GPU: the Triton and FlashInfer verify forwards (a draft-tree mask)
against the float32 reference, the verify CUDA graph against the eager verify forward, and greedy
output of each decoder equal to plain decoding with CUDA graphs on (SmolLM2 in float32, where
greedy paths do not split on near-ties; FlashInfer runs 16-bit only: a tiny random model with
peaked predictions there). The FlashInfer cases use bfloat16 and the 8B shape's head geometry
(head_dim 128, 4 query heads per KV head), so they share one JIT-built custom-mask prefill module."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parent))

TREES = [[-1, 0, 0, 1, 1, 2, 4, 6], [-1, 0, 1, 2], [-1]]
BIG_TREES = [[-1] + [(j - 1) // 2 for j in range(1, 32)], [-1, 0, 1, 2], [-1] + list(range(15))]  # row blocks
CODE = "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    return width * height\n"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("layer_kw", [{}, {"sliding_window": 9}])
@pytest.mark.parametrize("trees", [TREES, BIG_TREES], ids=["8-nodes", "32-nodes"])
def test_triton_verify_matches_tree_reference(dtype, tol, layer_kw, trees):
    from attn_harness import AttnProblem, relative_error

    from jackfield_plugins.attention.triton import TritonAttnBackend

    p = AttnProblem([37, 3000, 5], [len(t) for t in trees], 8, 2, 64, 16, dtype, "cuda", seed=3)
    backend, layer = TritonAttnBackend(p.runtime()), p.layer(**layer_kw)
    fb, q, k, v = p.verify_batch(backend, trees)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    assert relative_error(out, p.tree_reference(q, fb, layer, trees)) < tol


def _flashinfer():
    from jackfield_plugins.attention.flashinfer import FlashInferAttnBackend

    if not FlashInferAttnBackend.availability().ok:
        pytest.skip(f"flashinfer: {FlashInferAttnBackend.availability().reason}")
    return FlashInferAttnBackend


@pytest.mark.parametrize("layer_kw", [{}, {"sliding_window": 9}])
@pytest.mark.parametrize("page_size", [1, 16])
def test_flashinfer_verify_matches_tree_reference(layer_kw, page_size):
    from attn_harness import AttnProblem, relative_error

    p = AttnProblem([37, 300, 5], [len(t) for t in TREES], 8, 2, 128, page_size, torch.bfloat16, "cuda", seed=3)
    backend, layer = _flashinfer()(p.runtime()), p.layer(**layer_kw)
    fb, q, k, v = p.verify_batch(backend, TREES)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    assert relative_error(out, p.tree_reference(q, fb, layer, TREES)) < 2e-2


@torch.inference_mode()
@pytest.mark.parametrize("name", ["triton", "flashinfer"])
def test_verify_cuda_graph_replay_matches_reference(name):
    """A verify forward captured at batch 4 with 8 nodes per request, replayed for 3 live requests
    (padded with a dummy request, as VerifyGraphRunner pads) with two other sets of trees."""
    from dataclasses import replace

    from attn_harness import AttnProblem, relative_error

    from jackfield_plugins.attention.triton import TritonAttnBackend

    trees = [[-1, 0, 0, 1, 1, 2, 4, 6], [-1, 0, 1, 2, 3, 4, 5, 6], [-1, 0, 0, 0, 0, 0, 0, 0]]
    p = AttnProblem([37, 300, 5], [8, 8, 8], 8, 2, 128, 16, torch.bfloat16, "cuda", seed=4)
    cls = TritonAttnBackend if name == "triton" else _flashinfer()
    backend, layer = cls(p.runtime(max_batch_size=4)), p.layer()
    backend.init_cuda_graph_state(4, 32)
    fb, q, k, v = p.verify_batch(backend, trees)
    backend.init_forward_metadata(fb)  # one eager forward first, as the engine runs before capturing
    backend.forward(q, k, v, layer, fb)

    def padded(fb):  # request 4: request-table row 0, KV slots 0, no prefix, every node sees itself
        cat = lambda a, b: torch.cat([a, b.to(a.dtype)])  # noqa: E731
        eye = torch.eye(8, dtype=torch.bool, device="cuda").reshape(-1)
        return replace(fb, batch_size=4, input_ids=cat(fb.input_ids, torch.zeros(8, device="cuda")),
                       positions=cat(fb.positions, torch.arange(8, device="cuda")),
                       req_pool_indices=cat(fb.req_pool_indices, torch.zeros(1, device="cuda")),
                       seq_lens=cat(fb.seq_lens, torch.full((1,), 8, device="cuda")),
                       out_cache_loc=cat(fb.out_cache_loc, torch.zeros(8, device="cuda")),
                       seq_lens_cpu=fb.seq_lens_cpu + (8,),
                       extend_prefix_lens=cat(fb.extend_prefix_lens, torch.zeros(1, device="cuda")),
                       extend_seq_lens=cat(fb.extend_seq_lens, torch.full((1,), 8, device="cuda")),
                       extend_start_loc=cat(fb.extend_start_loc, torch.full((1,), 24, device="cuda")),
                       extend_prefix_lens_cpu=fb.extend_prefix_lens_cpu + (0,), extend_seq_lens_cpu=(8,) * 4,
                       tree_mask=cat(fb.tree_mask, eye),
                       tree_mask_indptr=cat(fb.tree_mask_indptr, fb.tree_mask_indptr[-1:] + 64))

    static_q = torch.zeros(32, q.shape[1], dtype=q.dtype, device="cuda")
    big = padded(fb)
    static = {name: getattr(big, name).clone() for name in
              ("positions", "req_pool_indices", "seq_lens", "extend_prefix_lens", "tree_mask")}
    live = replace(big, **static)
    backend.init_forward_metadata_capture(live)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(static_q, None, None, layer, live, save_kv=False)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph, stream=stream):
        out = backend.forward(static_q, None, None, layer, live, save_kv=False)
    for trees_now in (trees[::-1], [[-1, 0, 1, 1, 3, 3, 5, 5]] * 3):
        fb2, q2, k2, v2 = p.verify_batch(backend, trees_now)  # new q/k/v, new tree shapes
        p.pool.set_kv(0, fb2.out_cache_loc, k2, v2)
        big2 = padded(fb2)
        for name, buf in static.items():
            buf.copy_(getattr(big2, name))
        static_q.zero_()
        static_q[:24].copy_(q2)
        backend.init_forward_metadata_replay(replace(live, seq_lens_cpu=big2.seq_lens_cpu,
                                                     extend_prefix_lens_cpu=big2.extend_prefix_lens_cpu))
        graph.replay()
        torch.cuda.synchronize()
        assert relative_error(out[:24], p.tree_reference(q2, fb2, layer, trees_now)) < 2e-2


def test_flashinfer_speculative_greedy_equal():
    """ngram on the kit's workload, bfloat16 and flashinfer with CUDA graphs (decode and verify)
    against plain decoding on the same backend: token for token, and the pool back to idle."""
    import tempfile

    from jackfield.testing.suites import speculative as suite
    from jackfield_plugins.spec.ngram import NgramDecoder

    _flashinfer()
    target = suite.tiny_target(head_dim=128, num_heads=4, num_kv_heads=1, gain=2.0)  # repeats its input often
    kw = dict(device="cuda", dtype="bfloat16", attention_backend="flashinfer", page_size=4)
    with tempfile.TemporaryDirectory() as work:
        plain = suite.spec_scheduler(None, target, work, **kw)
        try:
            want = suite.run_workload(plain)
        finally:
            plain.close()
        sched = suite.spec_scheduler(NgramDecoder, target, work, **kw)
        try:
            assert sched.runner.verify_graphs is not None
            got = suite.run_workload(sched)
            assert got == want
            assert sched.spec.stats.verify_steps > 0 and sched.spec.stats.accepted > 0
            assert suite.pool_idle_problem(sched) is None
        finally:
            sched.close()


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
