"""Attention kernel benchmark: decode bandwidth and prefill throughput of every available GPU backend.

Decode: one layer of the Llama-3.1-8B attention shape (32 q heads, 8 kv heads, head dim 128, bf16)
at batch 1/16/64/256 × context 512..8192; time is the median of triton.testing.do_bench over the
backend's forward_decode (metadata prepared once, outside the timing), reported as achieved GB/s of
K/V read. Prefill: one request of a few lengths with no cached prefix, reported as causal TFLOP/s.

    python benchmarks/attention_kernels.py --out results.json [--backends triton,flashinfer] [--page-size 16]
        [--backends flashinfer_cuda_core]   # FlashInfer's CUDA-core decode for the GQA shape (no prefill)
        [--cuda-graph]   # time decode from a CUDA graph replay, i.e. without Python launch overhead
        [--cold-l2]      # decode from a graph that rotates over copies of the KV pool (200 MB+ in all)

With --cuda-graph alone, the replayed call reads the same KV every time (one layer: 4 KB per token),
so points whose KV fits in L2 (50 MB on an H100: batch 1, and batch 16 up to context 512) are read
partly from there and can measure above the DRAM rate; from batch 64 on it is 128 MB or more.
--cold-l2 rotates over enough copies of the batch (separate pools, page tables and backend plans, at
most 32) that their KV together exceeds 200 MB; only batch 1 at context 512 (32 copies of 2 MB)
stays above L2 by a little.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

from jackfield.bench.common import replay_ms
from jackfield.sdk import AttentionLayerInfo, AttentionRuntime, ForwardBatch, ForwardMode, KVPool

BACKENDS = {"triton": "jackfield_plugins.attention.triton:TritonAttnBackend",
            "flashinfer": "jackfield_plugins.attention.flashinfer:FlashInferAttnBackend",
            "fa3": "jackfield_plugins.attention.fa3:FA3AttnBackend"}
# a measurement-only variant: FlashInfer's CUDA-core decode kernel where the plugin picks tensor cores (GQA >= 4)
VARIANTS = {"flashinfer_cuda_core": ("flashinfer", {"use_tensor_cores": False})}
HEADS, KV_HEADS, HEAD_DIM, DTYPE = 32, 8, 128, torch.bfloat16
BATCHES, CONTEXTS, PREFILL_LENS = (1, 16, 64, 256), (512, 1024, 2048, 4096, 8192), (1024, 4096, 8192, 16384)
COLD_BYTES, MAX_COPIES = 200 << 20, 32  # --cold-l2: KV read per graph replay, and the most pool copies


def available_backends(names: list[str]) -> dict[str, type]:
    found = {}
    for name in names:
        base, overrides = VARIANTS.get(name, (name, {}))
        module, cls_name = BACKENDS[base].split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        status = cls.availability()
        if not status.ok:
            print(f"skipping {name}: {status.reason}")
        elif overrides:
            found[name] = _with_attributes(cls, overrides)
        else:
            found[name] = cls
    return found


def _with_attributes(cls: type, overrides: dict):
    """A constructor of `cls` that sets `overrides` on the new backend before it plans anything."""
    def make(runtime):
        backend = cls(runtime)
        for key, value in overrides.items():
            setattr(backend, key, value)
        return backend
    return make


class Setup:
    """A KV pool holding `batch` requests of `context` tokens each, on randomly shuffled pages."""

    def __init__(self, batch: int, context: int, page_size: int):
        dev = torch.device("cuda")
        pages_per_req = -(-context // page_size)
        num_pages = batch * pages_per_req
        self.pool = KVPool(num_pages, page_size, 1, KV_HEADS, HEAD_DIM, DTYPE, dev)
        self.pool.k_buffers[0].normal_()
        self.pool.v_buffers[0].normal_()
        pages = (torch.randperm(num_pages, device=dev) + 1).view(batch, pages_per_req)
        slots = (pages[:, :, None] * page_size + torch.arange(page_size, device=dev)).flatten(1)[:, :context]
        self.req_to_token = torch.zeros(batch + 1, context, dtype=torch.int32, device=dev)
        self.req_to_token[1:] = slots.to(torch.int32)
        self.batch, self.context, self.page_size, self.dev = batch, context, page_size, dev

    def runtime(self) -> AttentionRuntime:
        return AttentionRuntime(1, HEADS, KV_HEADS, HEAD_DIM, DTYPE, self.dev, self.page_size, self.pool,
                                self.req_to_token, self.batch, self.context)

    def batch_of(self, backend, mode: ForwardMode, new_tokens: int) -> ForwardBatch:
        bs, dev, n = self.batch, self.dev, self.batch * new_tokens
        ints = lambda vals, dt=torch.int32: torch.tensor(vals, dtype=dt, device=dev)  # noqa: E731
        extend = {} if mode == ForwardMode.DECODE else dict(
            extend_prefix_lens=ints([self.context - new_tokens] * bs), extend_seq_lens=ints([new_tokens] * bs),
            extend_start_loc=ints([i * new_tokens for i in range(bs)]),
            extend_prefix_lens_cpu=(self.context - new_tokens,) * bs, extend_seq_lens_cpu=(new_tokens,) * bs)
        return ForwardBatch(
            mode=mode, batch_size=bs, input_ids=torch.zeros(n, dtype=torch.int64, device=dev),
            positions=torch.zeros(n, dtype=torch.int64, device=dev),
            req_pool_indices=torch.arange(1, bs + 1, device=dev), seq_lens=ints([self.context] * bs),
            out_cache_loc=torch.zeros(n, dtype=torch.int64, device=dev), req_to_token=self.req_to_token,
            kv_pool=self.pool, attn_backend=backend, seq_lens_cpu=(self.context,) * bs, **extend)


def save_rows(path: str | None, script: str, rows: list[dict]) -> None:
    """The tuning scripts' JSON report: provenance (this command line, commit, machine) and rows."""
    if not path:
        return
    from jackfield.bench.common import provenance

    with open(path, "w") as f:
        json.dump({**provenance(f"python3 benchmarks/{script} " + " ".join(sys.argv[1:])), "rows": rows}, f, indent=2)


def time_ms(fn, cuda_graph: bool = False) -> float:
    """Median milliseconds; with cuda_graph the calls are replayed from a graph (no launch overhead)."""
    import triton.testing

    if cuda_graph:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_decode(cls, batch: int, context: int, page_size: int, cuda_graph: bool = False,
                 cold_l2: bool = False) -> dict:
    layer = AttentionLayerInfo(0, HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * DTYPE.itemsize
    copies = min(MAX_COPIES, -(-COLD_BYTES // kv_bytes)) if cold_l2 else 1
    calls = []
    for _ in range(copies):
        setup = Setup(batch, context, page_size)
        backend = cls(setup.runtime())
        fb = setup.batch_of(backend, ForwardMode.DECODE, 1)
        q = torch.randn(batch, HEADS * HEAD_DIM, dtype=DTYPE, device="cuda")
        backend.init_forward_metadata(fb)
        calls.append(lambda b=backend, q=q, fb=fb: b.forward_decode(q, layer, fb))
        calls[-1]()  # every backend runs once eagerly before capture (FlashInfer plans a variant on first use)
    if cold_l2:
        ms = replay_ms(calls * max(1, 24 // copies))
    else:
        ms = time_ms(calls[0], cuda_graph)
    return {"batch": batch, "context": context, "ms": ms, "kv_bytes": kv_bytes, "gbps": kv_bytes / ms / 1e6,
            "copies": copies}


def bench_prefill(cls, length: int, page_size: int) -> dict:
    setup = Setup(1, length, page_size)
    backend = cls(setup.runtime())
    fb = setup.batch_of(backend, ForwardMode.EXTEND, length)
    layer = AttentionLayerInfo(0, HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)
    q = torch.randn(length, HEADS * HEAD_DIM, dtype=DTYPE, device="cuda")
    backend.init_forward_metadata(fb)
    ms = time_ms(lambda: backend.forward_extend(q, layer, fb))
    flops = 4 * HEADS * HEAD_DIM * length * (length + 1) / 2  # QK^T and PV over the causal triangle
    return {"length": length, "ms": ms, "tflops": flops / ms / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backend names")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--cuda-graph", action="store_true", help="time decode replayed from a CUDA graph")
    ap.add_argument("--cold-l2", action="store_true",
                    help="time decode from a graph that rotates over copies of the batch, so KV comes from DRAM")
    args = ap.parse_args()
    backends = available_backends(args.backends.split(","))
    from jackfield.bench.common import provenance

    results = {**provenance("python3 benchmarks/attention_kernels.py " + " ".join(sys.argv[1:])),
               "device": torch.cuda.get_device_name(), "page_size": args.page_size,
               "cuda_graph": args.cuda_graph or args.cold_l2, "cold_l2": args.cold_l2,
               "shape": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16"},
               "decode": [], "prefill": []}
    for name, cls in backends.items():
        for batch in BATCHES:
            for context in CONTEXTS:
                row = {"backend": name,
                       **bench_decode(cls, batch, context, args.page_size, args.cuda_graph, args.cold_l2)}
                results["decode"].append(row)
                print(f"decode  {name:>10} bs={batch:<4} ctx={context:<5} {row['ms'] * 1e3:9.1f} us "
                      f"{row['gbps']:8.1f} GB/s", flush=True)
                torch.cuda.empty_cache()
        for length in PREFILL_LENS if name not in VARIANTS else ():  # a decode-only variant
            row = {"backend": name, **bench_prefill(cls, length, args.page_size)}
            results["prefill"].append(row)
            print(f"prefill {name:>10} len={length:<6} {row['ms']:9.3f} ms {row['tflops']:8.1f} TFLOP/s", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
