"""Scheduler tests: a tiny random Llama saved once per session; single-threaded torch.

The models here are so small that intra-op threads only add synchronization cost (and, on a busy
machine, spin-waits that slow every op down by orders of magnitude), so these tests run torch with one
thread and restore the setting afterwards.
"""
from __future__ import annotations

import pytest
import torch

from sched_harness import save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
