"""Latent-layout (MLA) attention backends against the kit's MLA suite (jackfield.testing.suites.
attention_mla): torch_native_mla on CPU, and triton_mla's kernels under Triton's CPU interpreter
through a CPU-declared subclass (TRITON_INTERPRET must be set before the kernels are defined, so that
part runs in a child process; skipped without triton). tests/gpu/test_mla_gpu.py runs them on the GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jackfield.testing import KitTarget, run_checks
from jackfield.testing.suites import attention_mla
from jackfield_plugins.attention.torch_native_mla import TorchNativeMLABackend

CHILD = textwrap.dedent("""
    import json
    from jackfield.sdk import Availability, Capabilities
    from jackfield.testing import KitTarget, run_checks
    from jackfield.testing.suites import attention_mla
    from jackfield_plugins.attention.triton_mla import TritonMLABackend

    class CPUTritonMLA(TritonMLABackend):
        name = "triton_mla_interpreted"
        capabilities = Capabilities(devices=("cpu",), dtypes=("float32",))

        @classmethod
        def availability(cls):
            return Availability.yes()

    target = KitTarget("attention", CPUTritonMLA, "cpu")
    report = run_checks(target, attention_mla.checks(target))
    print("RESULT" + json.dumps({"passed": report.count("passed"),
                                 "failures": [f"{r.behaviour}: {r.detail}" for r in report.failures()]}))
""")


def test_torch_native_mla_passes_the_mla_suite():
    target = KitTarget("attention", TorchNativeMLABackend, "cpu")
    report = run_checks(target, attention_mla.checks(target))
    assert report.ok and report.count("passed") == 4, report.format()


def test_triton_mla_kernels_pass_the_mla_suite_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(line[len("RESULT"):])
    assert result["failures"] == [] and result["passed"] == 5, result
