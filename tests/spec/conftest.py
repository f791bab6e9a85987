"""Speculative-decoding tests: tiny random targets on CPU, torch on one thread unless a module
sets TORCH_THREADS (tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _threads(torch_threads):
    yield


@pytest.fixture(scope="session")
def tiny_target() -> str:
    from jackfield.testing.suites.speculative import tiny_target

    return tiny_target()
