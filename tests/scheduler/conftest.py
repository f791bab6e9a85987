"""Scheduler tests: a tiny random Llama saved once per session; single-threaded torch.

The models here are so small that intra-op threads only add synchronization cost (and, on a busy
machine, spin-waits that slow every op down by orders of magnitude), so these tests run torch with one
thread and restore the setting afterwards.
"""
from __future__ import annotations

import pytest

from sched_harness import one_torch_thread, save_tiny_llama  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))

