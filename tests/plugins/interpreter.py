"""Run a test file as a child process under Triton's CPU interpreter and read back its results.

TRITON_INTERPRET must be set before kernels are defined, and setting it in the pytest process would
switch later GPU tests to the interpreter too: the kernel cases run in a child (the test file run as
a script), which prints one line `RESULTS <json>`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_interpreted(script: str, timeout: int = 900) -> dict:
    """The child's results; skips where triton is missing, fails the test if the child does."""
    pytest.importorskip("triton", reason="triton is not installed; the interpreter test needs it")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    if proc.returncode or not lines:
        pytest.fail(f"interpreter child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


def report_cases(cases: dict) -> None:
    """The child's side: run each case (name -> a function returning its result), a failure reported
    per case, and print the `RESULTS <json>` line run_interpreted reads."""
    results = {}
    for name, fn in cases.items():
        try:
            results[name] = fn()
        except Exception as exc:  # reported per case by the parent
            results[name] = {"failure": f"{type(exc).__name__}: {exc}"}
    print("RESULTS " + json.dumps(results))
