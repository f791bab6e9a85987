"""pytest plugin of the conformance kit: one test item per check of a component's kind.

    import pytest
    from my_plugin.backend import MyBackend

    @pytest.mark.jackfield_kit(component=MyBackend)   # device="cpu" (default) or "cuda"; kind from the class
    def test_conformance(kit_check):
        kit_check.run()

The test is parametrized over the checks `certify(MyBackend)` would run, each item named after its
behaviour. A check that does not apply (an undeclared device, a feature the component does not
claim) is skipped with its reason; a failing check fails with the kit's message, naming what went
wrong. The class goes in as `component=`: a marker called with a class as its only positional
argument would decorate that class instead (pytest's rule). The plugin is active wherever jackfield is installed (the `pytest11` entry point
`jackfield`); elsewhere, enable it with `-p jackfield.testing.pytest_plugin`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

MARKER = "jackfield_kit"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(component=cls, device='cpu', kind=None): parametrize the test's "
                                       "`kit_check` argument over the conformance kit's checks for component class cls")


@dataclass(frozen=True)
class KitCase:
    """One check of the kit on one target; `run()` passes, skips or fails the running test."""

    target: object
    check: object

    def run(self) -> None:
        from jackfield.testing.kit import run_check

        result = run_check(self.check, self.target)
        if result.outcome == "skipped":
            pytest.skip(result.detail)
        if result.outcome == "failed":
            pytest.fail(f"{result.behaviour}: {result.detail}", pytrace=False)


def case_id(behaviour: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", behaviour).strip("-").lower()


def pytest_generate_tests(metafunc) -> None:
    if "kit_check" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker(MARKER)
    cls = marker and (marker.kwargs.get("component") or (marker.args[0] if marker.args else None))
    if not isinstance(cls, type):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: the `kit_check` argument needs "
                                f"@pytest.mark.{MARKER}(component=ComponentClass)")
    from jackfield.testing.kit import KitTarget, suite_checks

    target = KitTarget(marker.kwargs.get("kind") or cls.kind, cls, marker.kwargs.get("device", "cpu"))
    checks = suite_checks(target)
    metafunc.parametrize("kit_check", [KitCase(target, c) for c in checks], ids=[case_id(c.behaviour) for c in checks])
