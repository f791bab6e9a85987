"""GPU attention backends (triton, flashinfer) against a float32 reference, and CUDA-graph replay.

Each backend that is available here runs extend then decode over many shapes (batch 1/3/17, head
dim 64/128/256, GQA 1/4/8, page size 1/16, no prefix or random prefixes, bf16 and fp16), and over
an FP8 KV pool. Outputs
are allocated over NaN-poisoned allocator blocks, so an element a kernel never wrote shows up.
"""
from __future__ import annotations

import importlib
import random

import pytest
import torch

from attn_harness import AttnProblem, poison_allocator, relative_error, row_strided
from jackfield.sdk import ForwardBatch, ForwardMode

pytestmark = pytest.mark.gpu

BACKENDS = {"triton": "jackfield_plugins.attention.triton:TritonAttnBackend",
            "flashinfer": "jackfield_plugins.attention.flashinfer:FlashInferAttnBackend"}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def backend_class(name: str):
    if name == "triton":
        pytest.importorskip("triton")
    module, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    found = cls.availability()
    if not found.ok:
        pytest.skip(f"{name}: {found.reason}")
    return cls


def run_checked(backend, problem: AttnProblem, fb, q, k, v, layer, what: str) -> torch.Tensor:
    """forward() over poisoned memory, then: every element finite and close to the reference."""
    backend.init_forward_metadata(fb)
    poison_allocator(q.device, 4 * q.numel() * q.element_size())
    out = backend.forward(q, k, v, layer, fb)
    torch.cuda.synchronize()
    assert out.shape == q.shape and out.dtype == q.dtype, what
    assert torch.isfinite(out).all(), f"{what}: output has unwritten (NaN) or non-finite elements"
    err = relative_error(out, problem.reference(q, fb, layer))
    assert err < TOLERANCE[q.dtype], f"{what}: relative error {err:.3e}"
    return out


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("gqa", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("name", list(BACKENDS))
def test_extend_then_decode_match_reference(name, head_dim, gqa, page_size):
    cls = backend_class(name)
    rng = random.Random(f"{name}-{head_dim}-{gqa}-{page_size}")
    for dtype in (torch.bfloat16, torch.float16):
        for bs in (1, 3, 17):
            for with_prefix in (False, True):
                prefix = [rng.randint(1, 300) if with_prefix else 0 for _ in range(bs)]
                new = [rng.randint(1, 160) for _ in range(bs)]
                p = AttnProblem(prefix, new, 2 * gqa, 2, head_dim, page_size, dtype, "cuda",
                                seed=rng.randint(0, 1 << 30))
                backend, layer = cls(p.runtime()), p.layer()
                what = f"{name} {dtype} bs={bs} prefix={with_prefix}"
                fb, q, k, v = p.extend_batch(backend)
                out = run_checked(backend, p, fb, q, k, v, layer, f"extend {what}")
                assert torch.equal(backend.forward(row_strided(q), k, v, layer, fb), out), f"extend {what}: strided q"
                fb, q, k, v = p.decode_batch(backend)
                out = run_checked(backend, p, fb, q, k, v, layer, f"decode {what}")
                assert torch.equal(backend.forward(row_strided(q), k, v, layer, fb), out), f"decode {what}: strided q"


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("gqa", [1, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("name", list(BACKENDS))
def test_fp8_kv_cache(name, head_dim, gqa, page_size):
    """An FP8 pool (K / 0.5 and V / 2 stored as e4m3, written by the Triton store kernel) read by
    the backend against the reference on the dequantized pool."""
    cls = backend_class(name)
    p = AttnProblem([0, 150, 300], [120, 33, 1], 2 * gqa, 2, head_dim, page_size, torch.bfloat16, "cuda", seed=11,
                    kv_dtype=torch.float8_e4m3fn, kv_scales=(0.5, 2.0))
    backend, layer = cls(p.runtime()), p.layer()
    run_checked(backend, p, *p.extend_batch(backend), layer, f"{name} fp8 extend")
    run_checked(backend, p, *p.decode_batch(backend), layer, f"{name} fp8 decode")


@pytest.mark.parametrize("layer_kw", [{"sliding_window": 37}, {"logit_cap": 20.0, "scaling": 0.3},
                                      {"sliding_window": 200, "logit_cap": 5.0}])
@pytest.mark.parametrize("name", list(BACKENDS))
def test_sliding_window_and_soft_cap(name, layer_kw):
    cls = backend_class(name)
    p = AttnProblem([0, 150, 300, 7], [120, 33, 1, 90], 16, 4, 128, 16, torch.bfloat16, "cuda", seed=7)
    backend, layer = cls(p.runtime()), p.layer(**layer_kw)
    run_checked(backend, p, *p.extend_batch(backend), layer, f"extend {layer_kw}")
    run_checked(backend, p, *p.decode_batch(backend), layer, f"decode {layer_kw}")


def test_triton_decode_without_host_seq_lens():
    cls = backend_class("triton")
    p = AttnProblem([900, 20, 4000], [1, 1, 1], 32, 8, 128, 1, torch.bfloat16, "cuda", seed=3)
    backend = cls(p.runtime())
    run_checked(backend, p, *p.decode_batch(backend, with_cpu_lens=False), p.layer(), "decode without seq_lens_cpu")


def test_triton_decode_last_split_merge_is_exact_and_resets():
    """The decode kernel merges each (request, kv head)'s splits in whichever of its programs finishes
    last: over many launches the outputs are bitwise equal (the merge reads every partial in split
    order, so a partial read before it was written would show), match the merge kernel's, and the
    semaphores are back at zero after every launch."""
    cls = backend_class("triton")
    rng = random.Random(7)
    p = AttnProblem([rng.randint(500, 3000) for _ in range(16)], [1] * 16, 32, 8, 128, 16, torch.bfloat16, "cuda",
                    seed=7)
    backend, layer = cls(p.runtime(max_batch_size=16)), p.layer()
    fb, q, k, v = p.decode_batch(backend)
    backend.init_forward_metadata(fb)
    assert backend.meta.num_splits > 1
    outs = [backend.forward(q, k, v, layer, fb) for _ in range(200)]
    torch.cuda.synchronize()
    assert not backend.semaphores.any(), "semaphores left set after the launches"
    differing = sum(not torch.equal(out, outs[0]) for out in outs)
    assert differing == 0, f"{differing} of {len(outs)} launches differ from the first"
    semaphores, backend.semaphores = backend.semaphores, backend.semaphores[:0]  # the merge kernel
    by_kernel = run_checked(backend, p, fb, q, k, v, layer, "decode through the merge kernel")
    backend.semaphores = semaphores
    assert relative_error(outs[0], by_kernel.float()) < 1e-2
    run_checked(backend, p, fb, q, k, v, layer, "decode merged by the last split")


class StaticDecodeBatch:
    """The static input buffers a decode CUDA graph reads; `load` copies a live batch in, padded."""

    def __init__(self, problem: AttnProblem, backend, graph_bs: int):
        dev, hd = problem.device, problem.head_dim
        self.bs, self.fill = graph_bs, backend.cuda_graph_seq_len_fill_value()
        z = lambda *shape, dtype=torch.int64: torch.zeros(*shape, dtype=dtype, device=dev)  # noqa: E731
        self.q = z(graph_bs, problem.num_heads * hd, dtype=problem.dtype)
        self.k, self.v = (z(graph_bs, problem.num_kv_heads * hd, dtype=problem.dtype) for _ in range(2))
        self.fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=graph_bs, input_ids=z(graph_bs), positions=z(graph_bs),
            req_pool_indices=z(graph_bs), seq_lens=torch.full((graph_bs,), self.fill, dtype=torch.int32, device=dev),
            out_cache_loc=z(graph_bs), req_to_token=problem.req_to_token, kv_pool=problem.pool,
            attn_backend=backend, seq_lens_cpu=(self.fill,) * graph_bs)

    def load(self, fb: ForwardBatch, q, k, v) -> ForwardBatch:
        n = fb.batch_size
        pairs = ((self.fb.req_pool_indices, fb.req_pool_indices, 0), (self.fb.seq_lens, fb.seq_lens, self.fill),
                 (self.fb.out_cache_loc, fb.out_cache_loc, 0), (self.q, q, 0), (self.k, k, 0), (self.v, v, 0))
        for dst, src, pad in pairs:
            dst[:n].copy_(src)
            dst[n:].fill_(pad)
        lens = tuple(fb.seq_lens_cpu) + (self.fill,) * (self.bs - n)
        return ForwardBatch(**{**self.fb.__dict__, "seq_lens_cpu": lens})


def capture_decode(backend, static: StaticDecodeBatch, layer):
    """One warm-up forward on a side stream, then the decode forward over `static` captured in a graph;
    returns (graph, its output buffer). Metadata must have been set with init_forward_metadata_capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(static.q, static.k, static.v, layer, static.fb)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(static.q, static.k, static.v, layer, static.fb)
    return graph, out


@pytest.mark.parametrize("name", list(BACKENDS))
def test_decode_cuda_graph_replay_matches_eager(name):
    cls = backend_class(name)
    rng = random.Random(11)
    prefix = [rng.randint(200, 2000) for _ in range(5)]
    p = AttnProblem(prefix, [1] * 5, 32, 8, 128, 16, torch.bfloat16, "cuda", seed=5)
    backend, layer = cls(p.runtime(max_batch_size=8)), p.layer()
    backend.init_cuda_graph_state(8, 8)
    static = StaticDecodeBatch(p, backend, graph_bs=8)
    backend.init_forward_metadata_capture(static.load(*p.decode_batch(backend)))
    graph, graph_out = capture_decode(backend, static, layer)

    for trial in range(4):
        lens = [rng.randint(1, n + 1) for n in prefix]
        fb, q, k, v = p.decode_batch(backend, seq_lens=lens)
        backend.init_forward_metadata_replay(static.load(fb, q, k, v))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(graph_out).all(), f"trial {trial}: graph output has NaN rows"
        eager = run_checked(backend, p, fb, q, k, v, layer, f"eager decode, trial {trial}")
        err = relative_error(graph_out[:5], eager.float())
        assert err < 1e-2, f"trial {trial}: graph vs eager relative error {err:.3e}"


def test_flashinfer_large_decode_batch_plans_without_split_kv():
    """A decode batch with at least SPLIT_KV_MAX_CTAS (request, KV head) pairs per SM is planned without
    split-KV (no merge kernel); its output must still match the reference, eager and graph-replayed."""
    from jackfield_plugins.attention.flashinfer import SPLIT_KV_MAX_CTAS

    cls = backend_class("flashinfer")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bs = -(-SPLIT_KV_MAX_CTAS * sms // 8) + 3
    rng = random.Random(3)
    p = AttnProblem([rng.randint(100, 700) for _ in range(bs)], [1] * bs, 32, 8, 128, 1, torch.bfloat16, "cuda",
                    seed=9)
    backend, layer = cls(p.runtime(max_batch_size=bs)), p.layer()
    assert not backend.split_kv_allowed(bs) and backend.split_kv_allowed(4)
    backend.init_cuda_graph_state(bs, bs)
    static = StaticDecodeBatch(p, backend, graph_bs=bs)
    fb, q, k, v = p.decode_batch(backend)
    backend.init_forward_metadata_capture(static.load(fb, q, k, v))
    graph, graph_out = capture_decode(backend, static, layer)
    backend.init_forward_metadata_replay(static.load(fb, q, k, v))
    graph.replay()
    torch.cuda.synchronize()
    eager = run_checked(backend, p, fb, q, k, v, layer, "large decode batch, eager")
    assert relative_error(graph_out, eager.float()) < 1e-2
