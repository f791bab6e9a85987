"""The kit's lora suite: the built-in LoRA backends pass it on CPU (triton and triton_fused under
Triton's interpreter, in a child process, since TRITON_INTERPRET must be set before triton is imported), and
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
from jackfield_plugins.lora.triton import TritonFusedLoRA, TritonLoRA


def on_cpu(cls):  # the same kernels, run by Triton's CPU interpreter
    class OnCPU(cls):
        capabilities = Capabilities(devices=("cpu",), dtypes=("float32", "float16"))

        @classmethod
        def availability(cls):
            return Availability.yes()

    OnCPU.__module__ = TritonLoRA.__module__
    return OnCPU


TritonOnCPU, FusedOnCPU = on_cpu(TritonLoRA), on_cpu(TritonFusedLoRA)
reports = {cls.name: certify(cls, "cpu") for cls in (TritonOnCPU, FusedOnCPU)}

# launches per wrapped layer in decode: triton two (shrink, expand); triton_fused one while the grid fits
import torch
from jackfield.sdk import lora_batch
from jackfield.testing.suites.lora import IN_FEATURES, QKV, kit_runtime, make_weights
w = make_weights(QKV, [[8, 8, 8]] * 4, torch.float32, "cpu", seed=1)
launches = {}
for cls in (TritonOnCPU, FusedOnCPU):
    for tokens in (1, 12):
        backend = cls(kit_runtime(torch.float32, "cpu"))
        backend.prepare(lora_batch([1] * tokens, [0] * tokens, torch.ones(4), decode=True))
        backend.apply(w, torch.randn(tokens, IN_FEATURES), torch.zeros(tokens, 128))
        launches[f"{cls.name} {tokens}"] = [backend.decode.fused_launches, backend.decode.split_launches]

# the fused kernel's fallback (an expand program that stops waiting computes its token's shrinks itself):
# forced for every expand program, with and without prologues; the counters end at zero
from jackfield.sdk.reference import lora as reference_lora
errors, slots = [], [2, -1, 0, 1]
scalings = torch.tensor([2.0, 0.5, 1.0, 3.0])
forced = FusedOnCPU(kit_runtime(torch.float32, "cpu"))
forced.decode.spin_limit = -1
forced.prepare(lora_batch([1] * 4, slots, scalings, decode=True))
h, norm_w, gate_up = torch.randn(4, IN_FEATURES) * 3, torch.rand(IN_FEATURES) + 0.5, torch.randn(4, 2 * IN_FEATURES)
base = torch.randn(4, 128)
gate, up = gate_up.chunk(2, dim=-1)
normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w
for x, run in ((h, lambda: forced.apply(w, h, base.clone())),
               (normed, lambda: forced.apply_normed(w, h, norm_w, 1e-5, base.clone())),
               (torch.nn.functional.silu(gate) * up, lambda: forced.apply_silu_mul(w, gate_up, base.clone()))):
    ref = reference_lora(x, base, w, torch.tensor(slots), scalings)
    errors.append(((run() - ref).norm() / (ref - base).norm()).item())
fallback = {"errors": errors, "fallbacks": forced.decode.fallbacks(), "fused": forced.decode.fused_launches,
            "counters_zero": bool((forced.decode.sync[:-1] == 0).all())}
print("REPORT " + json.dumps({"reports": {name: {"ok": r.ok, "passed": r.count("passed"), "text": r.format()}
                                          for name, r in reports.items()},
                              "launches": launches, "fallback": fallback}))
"""


def test_triton_kernels_pass_the_kit_in_the_interpreter():
    """Both triton backends: SGMV (prefill, mixed) and BGMV (decode: split-K shrink then expand;
    triton_fused's one-launch kernel for small batches and its no-wait fallback, forced) in float32
    and float16; bfloat16 and CUDA graphs are left to the GPU run (tests/gpu/test_kit_cuda.py)."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("REPORT "):])
    for name, report in result["reports"].items():
        assert report["ok"], f"{name}: " + report["text"]
        assert report["passed"] >= 12, f"{name}: " + report["text"]
    # (fused, split) decode launches of one layer: triton always two kernels; triton_fused one while
    # the grid fits (1 token), two for 12 tokens
    assert result["launches"] == {"triton 1": [0, 2], "triton 12": [0, 2], "triton_fused 1": [1, 0],
                                  "triton_fused 12": [0, 2]}, result["launches"]
    # forced fallback: 3 fused launches over 3 adapted tokens of one expand program each, exact, counters back at 0
    fallback = result["fallback"]
    assert fallback["fused"] == 3 and fallback["fallbacks"] == 9 and fallback["counters_zero"], fallback
    assert max(fallback["errors"]) < 1e-4, fallback


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
