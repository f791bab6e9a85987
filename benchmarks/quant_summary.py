"""Print the quantization benchmark reports of one quant_suite.sh run as tables: batch-1 decode and
weight memory per method, offline throughput, and the FP8 KV cache on vs off.

    python3 benchmarks/quant_summary.py benchmarks/results/quant-*-STAMP.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 2 ** 30
TOKENS_PER_REQUEST = 2048 + 256  # the kv part's requests


def main(paths: list[str]) -> int:
    rows = {"latency": [], "offline": [], "kv": []}
    for path in paths:
        name = Path(path).name
        kind = next((k for k in rows if name.startswith(f"quant-{k}-")), None)
        if kind is None:
            continue
        report = json.loads(Path(path).read_text())
        rows[kind].append((name, report["metrics"], report.get("git_commit", "?")))
    if rows["latency"]:
        print("\n| method (report) | quantization | weights GiB | batch-1 decode tok/s | prefill s |")
        print("|---|---|---|---|---|")
        for name, m, _ in rows["latency"]:
            r = m["results"][0]["jackfield"]
            print(f"| {name} | {m['quantization']} | {m['weight_bytes'] / GIB:.2f} | {r['decode_tok_per_s']:.1f} "
                  f"| {r['prefill_s']:.3f} |")
    if rows["offline"]:
        print("\n| offline (report) | quantization | weights GiB | output tok/s | total s | KV tokens |")
        print("|---|---|---|---|---|---|")
        for name, m, _ in rows["offline"]:
            print(f"| {name} | {m['quantization']} | {m['weight_bytes'] / GIB:.2f} | {m['output_tok_per_s']:.0f} "
                  f"| {m['total_s']:.1f} | {m['max_total_tokens']} |")
    if rows["kv"]:
        print("\n| KV cache (report) | dtype | KV tokens | largest batch of 2048+256 | output tok/s | retractions |")
        print("|---|---|---|---|---|---|")
        for name, m, _ in rows["kv"]:
            print(f"| {name} | {m['kv_cache_dtype']} | {m['max_total_tokens']} | "
                  f"{m['max_total_tokens'] // TOKENS_PER_REQUEST} | {m['output_tok_per_s']:.0f} | {m['retractions']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
