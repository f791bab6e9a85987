"""`jackfield bench latency|offline|serving`: benchmarks with JSON output."""
from __future__ import annotations

import importlib

BENCHES = {
    "latency": "One static batch: prefill time and decode tokens/s",
    "offline": "Throughput with all requests submitted at once",
    "serving": "Load generator against an OpenAI-compatible server",
    "prefix": "Shared-prefix workload with the radix cache on and off",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="Run a benchmark")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    for name, help_text in BENCHES.items():
        mod = importlib.import_module(f"jackfield.bench.{name}")
        bp = bsub.add_parser(name, help=help_text)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
