"""`jackfield bench latency|offline|serving`: benchmarks with JSON output."""
from __future__ import annotations

import importlib

BENCHES = {
    "latency": "One static batch: prefill time and decode tokens/s",
    "offline": "Throughput with all requests submitted at once",
    "serving": "Load generator against an OpenAI-compatible server",
    "prefix": "Shared-prefix workload with the radix cache on and off",
    "grammar": "Structured outputs: mask time per backend, constrained tok/s, jump-forward latency",
    "soak": "Mixed traffic with client faults for N minutes; checks nothing is lost or leaked",
    "spec": "Speculative decoding on vs off: tok/s and accepted length per concurrency",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="Run a benchmark")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    for name, help_text in BENCHES.items():
        bp = bsub.add_parser(name, help=help_text)
        try:
            mod = importlib.import_module(f"jackfield.bench.{name}")
        except ImportError as exc:  # one broken benchmark must not take the whole CLI down
            bp.set_defaults(func=lambda args, _e=exc, _n=name: _unavailable(_n, _e))
            continue
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)


def _unavailable(name: str, exc: Exception) -> int:
    print(f"jackfield: error: benchmark '{name}' is unavailable: {exc}")
    return 2
