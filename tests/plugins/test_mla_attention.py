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

    # the fused MLA preparation kernel against the layer's torch path (norm, rope, copies, store)
    import torch
    from jackfield.kernels.mla_prepare import mla_prepare
    from jackfield.sdk.layers.norm import RMSNorm
    from jackfield.sdk.layers.rotary import RotaryEmbedding
    from jackfield.sdk.model_config import RopeConfig
    torch.manual_seed(0)
    t, heads, lora, rope, qk = 5, 4, 64, 16, 40
    norm = RMSNorm(lora, 1e-6, torch.float32, "cpu")
    norm.weight.data = torch.randn(lora)
    rot = RotaryEmbedding(rope, RopeConfig(theta=10000.0, rotary_dim=rope), 64, torch.float32, "cpu")
    pos = torch.tensor([0, 3, 7, 9, 63])
    fused = torch.randn(t, 30 + lora + rope)          # [q_part | kv_a]: kv_a is a row-strided view
    kv_a = fused[:, 30:]
    q = torch.randn(t, heads, qk)
    q_pe = q[..., qk - rope:]                          # strided heads, as the layer passes it
    q_full, latent = torch.zeros(t, heads, lora + rope), torch.zeros(t, lora + rope)
    cache, loc = torch.zeros(20, lora + rope), torch.tensor([3, 11, 0, 7, 5])
    mla_prepare(pos, kv_a, norm.weight, 1e-6, q_pe, rot.cos_sin_cache, q_full, latent, loc, cache)
    cos, sin = rot.cos_sin_cache[pos].chunk(2, dim=-1)
    ref = torch.cat([norm._norm(kv_a[:, :lora]), rot._rotate(kv_a[:, lora:].clone(), cos, sin)], dim=-1)
    ref_q = rot._rotate(q_pe.reshape(t, -1), cos, sin).view(t, heads, rope)
    prepare_err = max((latent - ref).abs().max().item(), (cache[loc] - ref).abs().max().item(),
                      (q_full[..., lora:] - ref_q).abs().max().item())
    print("RESULT" + json.dumps({"passed": report.count("passed"), "prepare_err": prepare_err,
                                 "failures": [f"{r.behaviour}: {r.detail}" for r in report.failures()]}))
""")


def test_torch_native_mla_passes_the_mla_suite():
    target = KitTarget("attention", TorchNativeMLABackend, "cpu")
    report = run_checks(target, attention_mla.checks(target))
    assert report.ok and report.count("passed") == 4, report.format()


def test_triton_mla_kernels_pass_the_mla_suite_under_the_interpreter():
    """Also checks the fused MLA preparation kernel (jackfield.kernels.mla_prepare) the MLA layer
    runs on CUDA, against the layer's torch path."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(line[len("RESULT"):])
    assert result["failures"] == [] and result["passed"] == 5, result
    assert result["prepare_err"] < 1e-5, result  # jackfield.kernels.mla_prepare against the torch path
