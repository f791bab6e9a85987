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
    tables = {
        "latency": ("method (report) | quantization | weights GiB | batch-1 decode tok/s | prefill s",
                    lambda m: [m["quantization"], f"{m['weight_bytes'] / GIB:.2f}",
                               f"{m['results'][0]['jackfield']['decode_tok_per_s']:.1f}",
                               f"{m['results'][0]['jackfield']['prefill_s']:.3f}"]),
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
