"""Speculative-decoding tests: tiny random targets on CPU, with single-threaded torch (see
tests/scheduler/conftest.py for why)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_target() -> str:
    from jackfield.testing.suites.speculative import tiny_target

    return tiny_target()
