"""Fused MoE kernel benchmark: one MoE layer's time per dispatcher, against a dense MLP with the same
active FLOPs, at the Qwen3-30B-A3B and DeepSeek-V2-Lite expert shapes (bf16, random routing).

Per (shape, batch): `triton` (and `flashinfer` where available) timed from one CUDA graph whose calls
rotate over enough copies of the layer's expert weights to exceed 200 MB, so weights come from DRAM
(jackfield.bench.common.replay_ms); `torch_native` timed eagerly (it reads the routing on the host,
so it cannot be captured), median of 10; the dense reference is F.linear(x, W1 [k*2I, H]), SiLU-mul,
F.linear(., W2 [H, k*I]) (same FLOPs per token as the k routed experts; at batch 1 also the same
bytes), captured like the fused kernels. Reported: us per layer, active TFLOP/s, and GB/s of the
weights the routing actually touches (distinct experts x 3HI x 2 bytes).

    python benchmarks/moe_kernels.py --out benchmarks/results/moe-kernels.json [--batches 1,64,256]
        [--shapes qwen3-30b-a3b,deepseek-v2-lite] [--dispatchers triton,flashinfer,torch_native]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from jackfield.bench.common import provenance, replay_ms
from jackfield.sdk import ExpertWeights, MoEConfig, RoutingConfig

SHAPES = {  # name: (experts, top_k, hidden, expert intermediate, routing)
    "qwen3-30b-a3b": (128, 8, 2048, 768, RoutingConfig(top_k=8, renormalize=True)),
    "deepseek-v2-lite": (64, 6, 2048, 1408, RoutingConfig(top_k=6, renormalize=False)),
}
COLD_BYTES, MAX_COPIES = 200 << 20, 8


def dispatcher_class(name: str):
    if name == "triton":
        from jackfield_plugins.moe.triton import TritonMoE as cls
    elif name == "flashinfer":
        from jackfield_plugins.moe.flashinfer import FlashInferMoE as cls
    else:
        from jackfield_plugins.moe.torch_native import TorchNativeMoE as cls
    return cls


def eager_ms(fn, reps: int = 10) -> float:
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_shape(name: str, batch: int, dispatchers: list[str]) -> list[dict]:
    e, k, h, i, routing = SHAPES[name]
    cfg = MoEConfig(e, h, i, routing)
    layer_bytes = 3 * e * h * i * 2
    copies = max(2, min(MAX_COPIES, -(-COLD_BYTES // layer_bytes)))
    gen = torch.Generator(device="cuda").manual_seed(batch)
    x = (torch.randn(batch, h, device="cuda", generator=gen) * 0.5).bfloat16()
    logits = torch.randn(batch, e, device="cuda", generator=gen)
    touched = torch.topk(logits, k, dim=-1).indices.unique().numel()
    flops = 2 * batch * k * 3 * h * i
    rows = []

    def row(dispatcher: str, ms: float, how: str) -> dict:
        out = {"shape": name, "batch": batch, "dispatcher": dispatcher, "us": ms * 1e3, "timing": how,
               "active_tflops": flops / ms / 1e9, "experts_touched": touched,
               "weight_gbps": touched * 3 * h * i * 2 / ms / 1e6}
        print(f"{name:>17} bs={batch:<5} {dispatcher:>13} {out['us']:9.1f} us  {out['active_tflops']:7.1f} TFLOP/s  "
              f"{out['weight_gbps']:7.0f} GB/s ({touched} experts)  [{how}]", flush=True)
        return out

    for d in dispatchers:
        cls = dispatcher_class(d)
        if not cls.availability().ok:
            print(f"skipping {d}: {cls.availability().reason}")
            continue
        disp = cls(cfg)
        n = 1 if d == "torch_native" else copies
        layers = [disp.prepare_weights(ExpertWeights(
            (torch.randn(e, 2 * i, h, device="cuda", generator=gen) * 0.02).bfloat16(),
            (torch.randn(e, h, i, device="cuda", generator=gen) * 0.02).bfloat16())) for _ in range(n)]
        if d == "torch_native":
            rows.append(row(d, eager_ms(lambda: disp.forward(x, logits, layers[0])), "eager"))
        else:
            calls = [lambda w=w: disp.forward(x, logits, w) for w in layers]
            rows.append(row(d, replay_ms(calls), f"cuda graph, {n} weight copies"))
        del layers
        torch.cuda.empty_cache()
    dense = [((torch.randn(k * 2 * i, h, device="cuda", generator=gen) * 0.02).bfloat16(),
              (torch.randn(h, k * i, device="cuda", generator=gen) * 0.02).bfloat16()) for _ in range(copies)]

    def dense_mlp(w1, w2):
        gate, up = F.linear(x, w1).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w2)

    rows.append(row("dense_same_flops", replay_ms([lambda a=a, b=b: dense_mlp(a, b) for a, b in dense]),
                    f"cuda graph, {copies} weight copies"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--dispatchers", default="triton,flashinfer,torch_native")
    args = ap.parse_args()
    results = {**provenance("python3 benchmarks/moe_kernels.py " + " ".join(sys.argv[1:])),
               "device": torch.cuda.get_device_name(), "rows": []}
    for shape in args.shapes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            results["rows"] += bench_shape(shape, batch, args.dispatchers.split(","))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
