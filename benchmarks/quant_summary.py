"""Print the quantization benchmark reports of one quant_suite.sh run as tables: batch-1 decode and
weight memory per method, offline throughput, the FP8 KV cache on vs off, and where a batch-1 decode
step's time goes (profile_decode.py reports).

    python3 benchmarks/quant_summary.py [--hbm-gbps 3350] benchmarks/results/quant-*-STAMP.json

Batch-1 decode reads every weight once per token, so its limit is the HBM bandwidth over the bytes
read per token: the weights as stored less the input embedding table (one row is read), when the
model config (the report's `model`) says it is not tied to the output head. The KV cache's bytes
(a few MB at 128 + 256 tokens) are left out.

A profile report's step splits into host time (the step through the scheduler less the decode
graph's replay), the linear layers' kernels and every other kernel of the graph. The profiler
stretches kernels, so its per-kernel shares are applied to the graph's replay time; the linear
layers' GB/s is the bytes a step reads over their share.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GIB = 2 ** 30
TOKENS_PER_REQUEST = 2048 + 256  # the kv part's requests


def bytes_per_token(metrics: dict) -> int:
    """Weight bytes a batch-1 decode step reads: all but an untied input embedding (stored bf16)."""
    config = Path(metrics["model"])
    if config.suffix != ".json" or not config.exists():
        return metrics["weight_bytes"]
    cfg = json.loads(config.read_text())
    if cfg.get("tie_word_embeddings", False):
        return metrics["weight_bytes"]
    return metrics["weight_bytes"] - cfg["vocab_size"] * cfg["hidden_size"] * 2


def latency_cells(metrics: dict, hbm_gbps: float) -> list[str]:
    tok_s = metrics["results"][0]["jackfield"]["decode_tok_per_s"]
    limit = hbm_gbps * 1e9 / bytes_per_token(metrics)
    return [metrics["quantization"], f"{metrics['weight_bytes'] / GIB:.2f}", f"{tok_s:.1f}", f"{limit:.0f}",
            f"{100 * tok_s / limit:.0f}%", f"{metrics['results'][0]['jackfield']['prefill_s']:.3f}"]


LINEAR_KERNELS = ("gemv", "gemm", "nvjet", "xmma", "cutlass", "_mm_kernel", "w8a8")  # names of matmul kernels


def profile_cells(report: dict, hbm_gbps: float) -> list[str]:
    step, graph = report["step_ms"], report.get("graph_only_ms")
    kernels = report.get("graph_kernels") or {}
    cells = [report["quantization"], f"{report['decode_tok_per_s']:.1f}", f"{step:.3f}"]
    nbytes = bytes_per_token(report)
    limit = f"{nbytes / 1e9:.2f} ({nbytes / hbm_gbps / 1e6:.3f})"
    if graph is None or not kernels.get("device_us_per_call"):
        return cells + ["-"] * 4 + [limit, "-"]
    linear_us = sum(k["us_per_call"] for k in kernels["kernels"] if any(n in k["kernel"] for n in LINEAR_KERNELS))
    linear = graph * linear_us / kernels["device_us_per_call"]
    return cells + [f"{graph:.3f}", f"{step - graph:.3f}", f"{linear:.3f}", f"{graph - linear:.3f}", limit,
                    f"{nbytes / linear / 1e6:.0f}"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hbm-gbps", type=float, default=3350.0, help="HBM bandwidth for the decode limit (H100 SXM)")
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args(argv)
    paths = args.paths
    rows = {"latency": [], "offline": [], "kv": [], "profile": []}
    for path in paths:
        name = Path(path).name
        kind = next((k for k in rows if name.startswith(f"quant-{k}-")), None)
        if kind is None:
            continue
        try:
            report = json.loads(Path(path).read_text())
        except json.JSONDecodeError:  # a run cut off before it printed its report
            print(f"skipped {name}: not a complete report", file=sys.stderr)
            continue
        rows[kind].append((name, report if kind == "profile" else report["metrics"], report.get("git_commit", "?")))
    tables = {
        "latency": (f"method (report) | quantization | weights GiB | batch-1 decode tok/s | HBM limit tok/s "
                    f"({args.hbm_gbps:g} GB/s) | of limit | prefill s",
                    lambda m: latency_cells(m, args.hbm_gbps)),
        "offline": ("offline (report) | quantization | weights GiB | output tok/s | total s | KV tokens",
                    lambda m: [m["quantization"], f"{m['weight_bytes'] / GIB:.2f}", f"{m['output_tok_per_s']:.0f}",
                               f"{m['total_s']:.1f}", str(m["max_total_tokens"])]),
        "kv": ("KV cache (report) | dtype | KV tokens | largest batch of 2048+256 | output tok/s | retractions",
               lambda m: [m["kv_cache_dtype"], str(m["max_total_tokens"]),
                          str(m["max_total_tokens"] // TOKENS_PER_REQUEST), f"{m['output_tok_per_s']:.0f}",
                          str(m["retractions"])]),
        "profile": (f"decode step (report) | quantization | batch-1 decode tok/s | step ms | graph ms | host ms | "
                    f"linear-layer kernels ms | other kernels ms | GB read a step (ms at {args.hbm_gbps:g} GB/s) | "
                    f"linear layers GB/s", lambda m: profile_cells(m, args.hbm_gbps)),
    }
    for kind, (header, cells) in tables.items():
        if rows[kind]:
            print(f"\n| {header} |")
            print("|" + "---|" * (header.count("|") + 1))
            for name, m, _ in rows[kind]:
                print("| " + " | ".join([name, *cells(m)]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
