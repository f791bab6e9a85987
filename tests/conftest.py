"""Shared test setup: tests marked `gpu` are skipped where no CUDA device is visible; engines decode
eagerly unless a test asks for the compiled step."""
from __future__ import annotations

import gc
import os

import pytest

from jackfield.server.heap import libc_malloc_trim

# Unset, enable_torch_compile compiles the batch-1 decode step of a quantized model on the CPU, which
# costs each engine ~25 s; tests/engine/test_decode_compile.py tests that path (servers the tests
# start inherit this too).
os.environ.setdefault("JACKFIELD_ENABLE_TORCH_COMPILE", "false")


@pytest.fixture(scope="module")
def torch_threads(request):
    """Torch's intra-op threads for one module: its `TORCH_THREADS` (default 1), restored after.
    Tiny models run fastest on one thread (more only add synchronization and, on a busy machine,
    spin-waits); a module with a real model may ask for more."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 1))
    yield
    torch.set_num_threads(before)


MALLOC_TRIM = libc_malloc_trim()


@pytest.fixture(scope="module", autouse=True)
def trim_heap_after_module():
    """After each module: collect garbage and give the heap's whole free pages back to the system
    (glibc's malloc_trim, as the scheduler's HeapTrimmer does), so that the holes one module's
    tensors leave in the heap are not still resident under the next. CI's memory limit counts the
    pytest process's peak resident size."""
    yield
    gc.collect()
    if MALLOC_TRIM is not None:  # None where the C library is not glibc
        MALLOC_TRIM(0)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch  # only when some collected test needs a GPU

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)
