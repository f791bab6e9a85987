"""Every built-in quantization plugin passes the conformance kit (`jackfield.testing.certify`) on
CPU: the interface checks every kind shares, and the quantization suite where the installed kit
has one (its layers against the float32 layer within `max_relative_error`, fused shards, the
fused norm and activation paths, wrong shapes refused)."""
from __future__ import annotations

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.testing import certify

BUILTIN = ("unquantized", "int4_weight_only", "fp8", "int8_wo", "awq", "gptq", "compressed_tensors", "gguf")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_quantization_plugin_passes_the_kit(name):
    registry = build_registry(*load_plugins(env={}))
    (info,) = registry.candidates("quantization", name)
    report = certify(info.cls, "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 5
