"""The conformance kit on CUDA: every built-in component that declares CUDA and is available here
passes it with device="cuda" (numerics in every declared dtype, CUDA-graph capture and replay for
the backends that claim it)."""
from __future__ import annotations

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.testing import certify


def cuda_components() -> list[tuple[str, str]]:
    registry = build_registry(*load_plugins(env={}))
    return sorted({(i.kind, i.name) for infos in registry.components.values() for i in infos
                   if i.distribution == "jackfield" and "cuda" in i.cls.capabilities.devices})


@pytest.mark.gpu
@pytest.mark.parametrize("kind, name", cuda_components(), ids=lambda v: v)
def test_builtin_component_passes_the_kit_on_cuda(kind, name):
    registry = build_registry(*load_plugins(env={}))
    info = registry.candidates(kind, name)[0]
    if not info.availability().ok:
        pytest.skip(f"{name} is unavailable here: {info.availability().reason}")
    report = certify(info.cls, "cuda")
    assert report.ok, report.format()
    if getattr(info.cls, "supports_cuda_graph", False):
        graph = [r for r in report.results if "CUDA-graph" in r.behaviour]
        assert graph and graph[0].outcome == "passed", report.format()
