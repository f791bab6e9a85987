"""Run schemathesis against a running `jackfield serve` and summarize its JSON reports.

    python tests/server/fuzz/run.py URL [--max-examples N] [--max-time S] [--seed N] [--report PATH]

Every phase but stateful (the API has no links between operations), every check, every route of
/openapi.json, with this directory's schemathesis.toml and hooks.py, in two runs: the examples and
coverage phases (given up to --max-time seconds), then the fuzzing phase for --max-time seconds.
Used by
tests/server/test_fuzz_api.py (a bounded run) and benchmarks/fuzz_api.sh (a long one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ST = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"
RUNS = ("examples,coverage", "fuzzing")


def fuzz(url: str, report: str, max_examples: int = 3, max_time: int = 50, seed: int = 0, workers: int = 1,
         request_timeout: float = 15.0) -> dict:
    """Run schemathesis; returns the summary (see `merge`) plus its exit code and output tail.

    One worker by default: with several, schemathesis's threads run `ast.parse` at once (hypothesis
    describes filter lambdas from their source), and CPython 3.11 keeps the AST builder's recursion
    depth per interpreter, not per thread, so a run fails now and then with "SystemError: AST
    constructor recursion depth mismatch" (two threads parsing at once reproduce it on 3.11.7):
    a fault of the tool, not of the API."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    parts, code, tail = [], 0, ""
    for phases in RUNS:
        path = Path(report).resolve().with_suffix(f".{phases.split(',')[-1]}.json")
        cmd = [sys.executable, "-c", ST, "--config-file", str(HERE / "schemathesis.toml"), "run",
               url.rstrip("/") + "/openapi.json", "--checks", "all", "--phases", phases,
               "--max-examples", str(max_examples), "--seed", str(seed), "--workers", str(workers),
               "--request-timeout", str(request_timeout), "--output-sanitize", "false",
               "--report", "json", "--report-json-path", str(path), "--max-time", str(max_time)]
        # in the report's directory: schemathesis keeps a .schemathesis/ cache where it runs
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max_time * 4 + 120,
                              cwd=path.parent)
        parts.append({"phases": phases, **(summarize(json.loads(path.read_text())) if path.exists() else {})})
        code = code or done.returncode
        tail += (done.stdout + done.stderr)[-6000:]
    return {**merge(parts), "exit_code": code, "output_tail": tail}


def summarize(report: dict) -> dict:
    failures = {f["code"]: {"title": f["title"], "count": f["count"], "operations": f["operations"]}
                for f in report.get("failures", [])}
    return {"schemathesis": report.get("schemathesis_version"), "seed": report.get("seed"),
            "seconds": round(report.get("running_time", 0), 1), "operations": report.get("operations", {}),
            "test_cases": report.get("test_cases", {}), "failures": failures,
            "server_errors": sum(f["count"] for f in report.get("failures", []) if f.get("type") == "ServerError"),
            "errors": report.get("errors", [])}


def merge(parts: list[dict]) -> dict:
    """One summary of the runs: times, cases and failures added up; `operations` of the run that
    tested the most (the coverage phase skips an operation schemathesis.toml exempts from it); each
    run's own summary under `runs`."""
    failures: dict = {}
    for part in parts:
        for code, f in part.get("failures", {}).items():
            seen = failures.setdefault(code, {"title": f["title"], "count": 0, "operations": []})
            seen["count"] += f["count"]
            seen["operations"] = sorted({*seen["operations"], *f["operations"]})
    cases: dict = {}
    for part in parts:
        for key, value in part.get("test_cases", {}).items():
            cases[key] = cases.get(key, 0) + value
    first = parts[0] if parts else {}
    widest = max(parts, key=lambda p: p.get("operations", {}).get("tested", 0), default={})
    return {"schemathesis": first.get("schemathesis"), "seed": first.get("seed"),
            "seconds": round(sum(p.get("seconds", 0) for p in parts), 1), "operations": widest.get("operations", {}),
            "test_cases": cases, "failures": failures, "server_errors": sum(p.get("server_errors", 0) for p in parts),
            "errors": [e for p in parts for e in p.get("errors", [])], "runs": parts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--max-examples", type=int, default=100)
    p.add_argument("--max-time", type=int, default=1800, help="seconds of the fuzzing phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="more than 1 races in CPython 3.11's ast.parse (see fuzz)")
    p.add_argument("--report", default="schemathesis-report.json")
    p.add_argument("--output", default=None, help="write the summary JSON here")
    args = p.parse_args()
    summary = fuzz(args.url, args.report, args.max_examples, args.max_time, args.seed, args.workers)
    print(summary.pop("output_tail"))
    from jackfield.bench.common import provenance

    summary = {**provenance("python tests/server/fuzz/run.py " + " ".join(sys.argv[1:])), **summary}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
