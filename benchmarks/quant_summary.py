"""Print the quantization benchmark reports of one quant_suite.sh run as tables: batch-1 decode and
weight memory per method, offline throughput, and the FP8 KV cache on vs off.

    python3 benchmarks/quant_summary.py [--hbm-gbps 3350] benchmarks/results/quant-*-STAMP.json

Batch-1 decode reads every weight once per token, so its limit is the HBM bandwidth over the bytes
read per token: the weights as stored less the input embedding table (one row is read), when the
model config (the report's `model`) says it is not tied to the output head. The KV cache's bytes
(a few MB at 128 + 256 tokens) are left out.
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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hbm-gbps", type=float, default=3350.0, help="HBM bandwidth for the decode limit (H100 SXM)")
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args(argv)
    paths = args.paths
    rows = {"latency": [], "offline": [], "kv": []}
    for path in paths:
        name = Path(path).name
        kind = next((k for k in rows if name.startswith(f"quant-{k}-")), None)
        if kind is None:
            continue
        report = json.loads(Path(path).read_text())
        rows[kind].append((name, report["metrics"], report.get("git_commit", "?")))
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
