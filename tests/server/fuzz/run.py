"""Run schemathesis against a running `jackfield serve` and summarize its JSON report.

    python tests/server/fuzz/run.py URL [--max-examples N] [--max-time S] [--seed N] [--report PATH]

Every phase but stateful (the API has no links between operations), every check, every route of
/openapi.json, with this directory's schemathesis.toml and hooks.py. Used by
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


def fuzz(url: str, report: str, max_examples: int = 3, max_time: int = 50, seed: int = 0, workers: int = 2,
         request_timeout: float = 15.0) -> dict:
    """Run schemathesis; returns the summary (see `summarize`) plus its exit code and output tail."""
    cmd = [sys.executable, "-c", ST, "--config-file", str(HERE / "schemathesis.toml"), "run",
           url.rstrip("/") + "/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing",
           "--max-examples", str(max_examples), "--max-time", str(max_time), "--seed", str(seed),
           "--workers", str(workers), "--request-timeout", str(request_timeout), "--output-sanitize", "false",
           "--report", "json", "--report-json-path", str(Path(report).resolve())]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # in the report's directory: schemathesis keeps a .schemathesis/ cache where it runs
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max_time * 4 + 120,
                          cwd=Path(report).resolve().parent)
    out = summarize(json.loads(Path(report).read_text())) if Path(report).exists() else {}
    return {**out, "exit_code": done.returncode, "output_tail": (done.stdout + done.stderr)[-6000:]}


def summarize(report: dict) -> dict:
    failures = {f["code"]: {"title": f["title"], "count": f["count"], "operations": f["operations"]}
                for f in report.get("failures", [])}
    return {"schemathesis": report.get("schemathesis_version"), "seed": report.get("seed"),
            "seconds": round(report.get("running_time", 0), 1), "operations": report.get("operations", {}),
            "test_cases": report.get("test_cases", {}), "failures": failures,
            "server_errors": sum(f["count"] for f in report.get("failures", []) if f.get("type") == "ServerError"),
            "errors": report.get("errors", [])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--max-examples", type=int, default=100)
    p.add_argument("--max-time", type=int, default=1800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
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
