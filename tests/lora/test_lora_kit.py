"""The kit's lora suite: both built-in LoRA backends pass it on CPU (the triton one under Triton's
interpreter, in a child process, since TRITON_INTERPRET must be set before triton is imported), and
backends with one plausible bug each fail it, naming the behaviour."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jackfield.testing import certify
from jackfield_plugins.lora.torch_native import TorchNativeLoRA


def test_torch_native_passes_the_kit():
    report = certify(TorchNativeLoRA, "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 14


INTERPRETED = """
import json
from jackfield.sdk import Availability, Capabilities
from jackfield.testing import certify
from jackfield_plugins.lora.triton import TritonLoRA

class TritonOnCPU(TritonLoRA):  # the same kernels, run by Triton's CPU interpreter
    capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "float16"))

    @classmethod
    def availability(cls):
        return Availability.yes()

TritonOnCPU.__module__ = TritonLoRA.__module__
report = certify(TritonOnCPU, "cpu")
print("REPORT " + json.dumps({"ok": report.ok, "passed": report.count("passed"), "text": report.format()}))
"""


def test_triton_kernels_pass_the_kit_in_the_interpreter():
    """SGMV (prefill, mixed) and BGMV (decode: split-K shrink, then expand; with the RMSNorm and
    SiLU-and-mul prologues) in float32 and float16; bfloat16 and CUDA graphs are left to the GPU run
    (tests/gpu/test_kit_cuda.py)."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("REPORT "):])
    assert result["ok"], result["text"]
    assert result["passed"] >= 12, result["text"]


class ScalingIgnored(TorchNativeLoRA):
    """Adds the update without the adapter's scaling (lora_alpha / r)."""

    name = "faulty_lora_scaling"

    def prepare(self, batch):
        import dataclasses

        super().prepare(dataclasses.replace(batch, scalings=batch.scalings * 0 + 1))


class FirstSlotOnly(TorchNativeLoRA):
    """Applies the first segment's adapter to every token of a prefill."""

    name = "faulty_lora_slots"

    def prepare(self, batch):
        import dataclasses

        slot = batch.segments[0][2] if batch.segments else 0
        super().prepare(dataclasses.replace(batch, segments=tuple((s, n, slot) for s, n, _ in batch.segments)))


class RankPaddingRead(TorchNativeLoRA):
    """Adds the slot's update twice on fused layers' later slices (an offset bug)."""

    name = "faulty_lora_offsets"

    def apply(self, weights, x, base_out):
        out = super().apply(weights, x, base_out)
        if weights.num_slices > 1:
            off, size = weights.slices[1]
            out[:, off:off + size] *= 1.01
        return out


@pytest.mark.parametrize("cls, behaviour", [
    (ScalingIgnored, "each slot's scaling"),
    (FirstSlotOnly, "prefill and mixed batches over several adapters and the base model match, in float32"),
    (RankPaddingRead, "a fused qkv layer applies each slice's rank"),
])
def test_faulty_backends_fail_naming_the_behaviour(cls, behaviour):
    cls.__module__ = TorchNativeLoRA.__module__  # declares JACKFIELD_API like the built-in
    report = certify(cls, "cpu")
    assert not report.ok
    failed = [r for r in report.failures() if behaviour in r.behaviour]
    assert failed, report.format()
    assert "unmerged" in failed[0].detail, report.format()
