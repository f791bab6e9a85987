"""MoE decode against the weight-bytes limit: an MoE model shape with dummy bf16 weights decodes at a
few batch sizes (jackfield bench latency's measurement), and each result is set against the tokens/s
that the bytes one decode step must read allow at the device's copy bandwidth.

Bytes per decode step at batch B: every non-expert weight (the embedding only when tied to the LM
head), the routed experts that B tokens touch (expected distinct experts E(1 - (1 - k/E)^B) under
uniform routing, k at batch 1) and the KV cache at the mean context (input + output/2). The
bandwidth is a device-to-device copy of 1 GiB (jackfield.bench.common.copy_gbps). `--layers` keeps
the first N layers of the config (a shorter run; the limit is computed for the same model).

    python benchmarks/moe_decode_limit.py --model benchmarks/configs/qwen3-30b-a3b.json \\
        --batch-size 1 64 --out benchmarks/results/moe-decode-limit.json [--layers 48] \\
        [--moe-backend auto] [--attention-backend auto] [--input-len 128] [--output-len 128] \\
        [--quantization fp8]

With `--quantization fp8` the dummy weights are quantized on load (the experts block-wise); the
bytes of a step are those of the stored codes and scales. `--profile` also replays each batch's
captured decode graph alone and breaks its device time down by kernel (benchmarks/profile_decode.py),
splitting it into the expert kernels and the rest, each against the bytes it reads.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from jackfield.bench.common import copy_gbps, provenance
from jackfield.bench.latency import measure
from jackfield.config import load_settings
from jackfield.engine_loop import build_scheduler
from jackfield.sdk.layers.moe import FusedExperts


def step_bytes(model: torch.nn.Module, config, batch: int, context: float, kv_bytes_per_token: int) -> dict:
    """What one decode step at `batch` reads: dense weights, touched experts, KV cache (bytes)."""
    experts = [m for m in model.modules() if isinstance(m, FusedExperts)]
    expert_ids = {id(p) for m in experts for p in m.parameters()}
    dense = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                if id(p) not in expert_ids and (config.tie_word_embeddings or "embed_tokens" not in name))
    e, k = config.moe.num_experts, config.moe.top_k
    touched = k if batch == 1 else e * (1 - (1 - k / e) ** batch)
    per_expert = sum(p.numel() * p.element_size() for m in experts for p in m.parameters()) / e
    return {"dense": dense, "experts_touched_per_layer": touched, "experts": touched * per_expert,
            "kv": batch * context * kv_bytes_per_token}


EXPERT_KERNELS = ("_gemv1_kernel", "_gemv2_kernel", "_gemm1_kernel", "_gemm2_kernel", "_layout_kernel", "_place_kernel")


def graph_profile(runner, bs: int, parts: dict, bandwidth: float, step_s: float) -> dict:
    """The captured decode graph replayed alone: its device time, by kernel, and the expert kernels'
    and the other kernels' time against the bytes each part reads at the copy rate."""
    from profile_decode import graph_only_ms, kernel_breakdown

    graph_ms = graph_only_ms(runner, bs)
    kernels = kernel_breakdown(runner.graph_runner.graphs[bs].replay, 10, top=40)
    layers = sum(isinstance(m, FusedExperts) for m in runner.model.modules())
    # the pair rows' sum of GEMV 2 split by pair is a torch reduction, one per expert layer
    moe_us = sum(k["us_per_call"] for k in kernels["kernels"] if k["kernel"].startswith(EXPERT_KERNELS)
                 or ("reduce_kernel" in k["kernel"] and k["launches_per_call"] == layers))
    rest_us = kernels["device_us_per_call"] - moe_us
    rest_bytes = parts["dense"] + parts["kv"]
    out = {"graph_ms": graph_ms, "step_ms": 1e3 * step_s, "experts_us": moe_us, "rest_us": rest_us,
           "experts_of_copy_rate": parts["experts"] / (moe_us * 1e-6) / (bandwidth * 1e9) if moe_us else None,
           "rest_of_copy_rate": rest_bytes / (rest_us * 1e-6) / (bandwidth * 1e9), "kernels": kernels}
    print(f"  graph alone {graph_ms:.3f} ms of a {1e3 * step_s:.3f} ms step; experts {moe_us:.0f} us "
          f"({parts['experts'] / 1e6:.0f} MB, {out['experts_of_copy_rate'] or 0:.0%} of copy rate), the rest "
          f"{rest_us:.0f} us ({rest_bytes / 1e6:.0f} MB, {out['rest_of_copy_rate']:.0%})", flush=True)
    for k in kernels["kernels"][:14]:
        print(f"  {k['us_per_call']:8.1f} us  x{k['launches_per_call']:<5g} {k['share']:6.1%}  {k['kernel'][:70]}")
    return out


def model_path(config_file: str, layers: int | None, tmp: str) -> str:
    if layers is None:
        return config_file
    cfg = json.loads(Path(config_file).read_text())
    cfg["num_hidden_layers"] = layers
    out = Path(tmp) / "config.json"
    out.write_text(json.dumps(cfg))
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an HF config.json (dummy weights)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--moe-backend", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--quantization", default="auto", help="a quantization method (fp8: weights quantized on load)")
    ap.add_argument("--profile", action="store_true", help="also the decode graph's device time by kernel")
    args = ap.parse_args()
    bandwidth = copy_gbps(1 << 30)
    print(f"copy bandwidth: {bandwidth:.0f} GB/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        top = max(args.batch_size)
        settings = load_settings(None, {
            "model": model_path(args.model, args.layers, tmp), "load_format": "dummy", "dtype": "bfloat16",
            "device": "cuda", "moe_backend": args.moe_backend, "attention_backend": args.attention_backend,
            "max_total_tokens": top * (args.input_len + args.output_len) + 4096, "max_running_requests": top,
            "cuda_graph_max_bs": top, "chunked_prefill_size": max(top * args.input_len, 2048),
            "max_prefill_tokens": max(top * args.input_len, 16384), "disable_radix_cache": True,
            "mem_fraction_static": 0.9, "quantization": args.quantization}).settings
        sched, info = build_scheduler(settings, progress=False)
    runner, config = sched.runner, sched.runner.config
    kv_per_token = runner.kv_layout.bytes_per_token(config.num_layers, runner.dtype)
    results = {**provenance("python3 benchmarks/moe_decode_limit.py " + " ".join(sys.argv[1:])),
               "device": torch.cuda.get_device_name(), "model": args.model, "layers": config.num_layers,
               "components": {k: v["name"] for k, v in info.components.items() if isinstance(v, dict) and "name" in v},
               "copy_gbps": bandwidth, "rows": []}
    for bs in args.batch_size:
        got = measure(sched, bs, args.input_len, args.output_len)
        parts = step_bytes(runner.model, config, bs, args.input_len + args.output_len / 2, kv_per_token)
        total = parts["dense"] + parts["experts"] + parts["kv"]
        limit = bs * bandwidth * 1e9 / total
        row = {**got, "step_bytes": parts, "step_gb": total / 1e9, "limit_tok_per_s": limit,
               "fraction_of_limit": got["decode_tok_per_s"] / limit}
        results["rows"].append(row)
        print(f"bs={bs:<4} decode {got['decode_tok_per_s']:8.1f} tok/s  limit {limit:8.1f} tok/s "
              f"({total / 1e9:.2f} GB/step, {parts['experts_touched_per_layer']:.1f} experts/layer)  "
              f"= {row['fraction_of_limit']:.1%}", flush=True)
        if args.profile and runner.graph_runner is not None and bs in runner.graph_runner.graphs:
            row["graph"] = graph_profile(runner, bs, parts, bandwidth, bs / got["decode_tok_per_s"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
