"""Metrics for `jackfield bench serving`: per-request results, summary statistics, table and JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# TPOT (time per output token after the first: (e2e - ttft) / (output_len - 1), per request) counts
# every token; ITL counts gaps between chunks that carry text, so tokens that complete no character
# yet (partial UTF-8 bytes, frequent with random weights) merge into the next gap.
LATENCY_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E latency"))
STATS = ("mean", "median", "p90", "p99", "std")


@dataclass
class RequestResult:
    """What one request produced. Times are seconds, measured from when the request was sent."""

    success: bool = False
    ttft: float = 0.0                       # time to the first non-empty content chunk
    itl: list[float] = field(default_factory=list)  # gaps between consecutive content chunks
    latency: float = 0.0                    # end-to-end time until the stream closed
    prompt_len: int = 0
    output_len: int = 0
    error: str = ""


def stats_ms(values: list[float]) -> dict[str, float]:
    """Mean, median (p50), p90, p99 and std of `values` (seconds), converted to milliseconds."""
    if not values:
        return {name: 0.0 for name in STATS}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "mean": float(arr.mean()),
        "median": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "std": float(arr.std()),
    }


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    """Aggregate per-request results of a run that took `duration` seconds into a flat dict."""
    ok = [r for r in results if r.success]
    duration = max(duration, 1e-9)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    summary: dict[str, Any] = {
        "duration_s": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "input_throughput": total_in / duration,
        "output_throughput": total_out / duration,
        "total_throughput": (total_in + total_out) / duration,
        "concurrency": sum(r.latency for r in ok) / duration,
    }
    series = {
        "ttft": [r.ttft for r in ok if r.output_len > 0],
        "tpot": [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1],
        "itl": [gap for r in ok for gap in r.itl],
        "e2e": [r.latency for r in ok],
    }
    for key, _ in LATENCY_METRICS:
        for stat, value in stats_ms(series[key]).items():
            summary[f"{stat}_{key}_ms"] = value
    summary["errors"] = [r.error for r in results if not r.success]
    summary["input_lens"] = [r.prompt_len for r in results]
    summary["output_lens"] = [r.output_len for r in results]
    summary["ttfts_ms"] = [r.ttft * 1000.0 for r in results]
    summary["e2e_latencies_ms"] = [r.latency * 1000.0 for r in results]
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.2f}"
    return str(value)


def format_table(summary: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A human-readable result table; `header` adds leading rows such as backend and model."""
    width = 50
    rows: list[tuple[str, Any]] = list((header or {}).items())
    rows += [
        ("Successful requests", summary["completed"]),
        ("Failed requests", summary["failed"]),
        ("Benchmark duration (s)", summary["duration_s"]),
        ("Total input tokens", summary["total_input_tokens"]),
        ("Total output tokens", summary["total_output_tokens"]),
        ("Request throughput (req/s)", summary["request_throughput"]),
        ("Input token throughput (tok/s)", summary["input_throughput"]),
        ("Output token throughput (tok/s)", summary["output_throughput"]),
        ("Total token throughput (tok/s)", summary["total_throughput"]),
        ("Concurrency", summary["concurrency"]),
    ]
    lines = [" Serving Benchmark Result ".center(width, "=")]
    lines += [f"{label + ':':<38}{_fmt(value):>12}" for label, value in rows]
    for key, title in LATENCY_METRICS:
        lines.append(f" {title} (ms) ".center(width, "-"))
        for stat in ("mean", "median", "p90", "p99"):
            lines.append(f"{stat.capitalize() + ' ' + key.upper() + ':':<38}{_fmt(summary[f'{stat}_{key}_ms']):>12}")
    stages = summary.get("first_token_stages_ms") or {}
    if stages:
        lines.append(" Server: TTFT by stage (mean ms) ".center(width, "-"))
        lines += [f"{name + ':':<38}{_fmt(ms):>12}" for name, ms in stages.items()]
    lines.append("=" * width)
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars made plain and infinite/NaN floats turned into strings ("inf")."""
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: str, report: dict[str, Any]) -> None:
    """Write the report dict to `path` as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(report), f, indent=2, default=str)
        f.write("\n")
