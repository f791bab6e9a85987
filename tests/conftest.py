"""Shared test setup: tests marked `gpu` are skipped where no CUDA device is visible; engines decode
eagerly unless a test asks for the compiled step."""
from __future__ import annotations

import gc
import os
import time

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


STARTED = time.time()  # when pytest loaded this file: before any test of the session ran


@pytest.fixture(scope="session")
def session_started() -> float:
    """The session's start (time.time()): files modified after it were written by this session's tests."""
    return STARTED


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory):
    """transformers' SmolLM2 as transformers' own GGUF reader dequantizes the embedded file (float32),
    saved once per session (config.json and model.safetensors, bit for bit the loaded weights) for
    tests/engine/model_harness.load_smollm2_hf: the GGUF reader takes ~30 s a load, which several
    modules paid each (the comparison tests, the prompt readout, lm-eval's reference, the converter's
    weights test); reading the saved copy back takes under a second."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    from jackfield.loader.default_model import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    directory = tmp_path_factory.mktemp("smollm2_hf")
    model.config.save_pretrained(str(directory))
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})  # tied: stored once
    del model
    gc.collect()
    return directory


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
