"""The test tree collects as one suite: test folders are not packages (only tests/foundation is), so
pytest imports their modules by basename and two modules of one name in different folders stop the
whole run at collection."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_outside_packages():
    modules = [p for p in TESTS.rglob("test_*.py") if not (p.parent / "__init__.py").exists()]
    repeated = {name: n for name, n in Counter(p.name for p in modules).items() if n > 1}
    assert not repeated, f"rename these test modules (same basename in several folders): {repeated}"
