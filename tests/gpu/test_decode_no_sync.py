"""A decode step under the overlap scheduler never waits for the device on the host, except for the
previous step's sampled tokens (an event wait, which torch's sync debug mode does not count). Nor
does admitting requests to a prefill (cached-prefix hits, chunk continuations, paged allocation),
nor releasing finished requests' KV (the tree takes whole pages, the allocator frees the rest). The
one read allowed besides is the allocator's double-free count, once the batch has drained (`audit`).

`torch.cuda.set_sync_debug_mode("warn")` warns at every synchronizing CUDA call (a blocking copy, a
`.item()`, a `.tolist()` of a device tensor), attributed to the Python line that made it; none may
come from jackfield's own code."""
import inspect
import json
import os
import warnings

import pytest
import torch
from jackfield.bench.common import random_prompts, submit_requests

pytestmark = pytest.mark.gpu

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1,
        "eos_token_id": 2, "torch_dtype": "bfloat16"}


def tiny_config(tmp_path) -> str:
    """The TINY config written as a model file under tmp_path."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return str(cfg)


def tiny_scheduler(tmp_path, **overrides):
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    defaults = dict(model=tiny_config(tmp_path), load_format="dummy", attention_backend="triton", max_total_tokens=8192,
                    max_running_requests=16, cuda_graph_max_bs=16)
    settings = load_settings(None, {**defaults, **overrides}).settings
    return build_scheduler(settings, progress=False)[0]


def syncs_while(run, *files: str) -> list[str]:
    """`file:line` of every synchronizing CUDA call that jackfield's own code (or only `files`,
    paths inside the package) makes while `run()` runs."""
    import jackfield

    root = os.path.dirname(jackfield.__file__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    wanted = {os.path.join(root, f) for f in files}
    return [f"{w.filename}:{w.lineno}" for w in caught
            if (w.filename in wanted if files else w.filename.startswith(root))]


def lines_of(fn) -> set[str]:
    """`file:line` of every line of a function."""
    lines, start = inspect.getsourcelines(fn)
    return {f"{inspect.getsourcefile(fn)}:{start + i}" for i in range(len(lines))}


def step_until(sched, done) -> None:
    while not done():
        sched.step()


def admitted(sched):
    return lambda: not sched.waiting and sched.chunked_req is None


def finished(sched):
    return lambda: not sched.has_work()


@pytest.mark.parametrize("page_size", [1, 4])
def test_decode_steps_make_no_host_device_sync(tmp_path, page_size):
    sched = tiny_scheduler(tmp_path, page_size=page_size)
    submit_requests(sched, random_prompts(12, 21, TINY["vocab_size"], 0), 40)
    step_until(sched, admitted(sched))
    for _ in range(3):
        sched.step()
    syncs = syncs_while(lambda: [sched.step() for _ in range(20)])  # decode only: nobody joins or finishes
    step_until(sched, finished(sched))
    assert not syncs, syncs


def test_prefill_admission_and_allocation_make_no_host_device_sync(tmp_path):
    """Radix-cache hits and chunk continuations on a paged pool: the slot of a request's last cached
    token is read on the device, and the allocator counts pages from host lengths."""
    sched = tiny_scheduler(tmp_path, page_size=4, chunked_prefill_size=64)
    shared = random_prompts(1, 30, TINY["vocab_size"], 1)[0]
    submit_requests(sched, [shared + tail for tail in random_prompts(2, 9, TINY["vocab_size"], 2)], 4, prefix="a")
    step_until(sched, finished(sched))  # caches the shared prefix
    prompts = [shared + tail for tail in random_prompts(6, 45, TINY["vocab_size"], 3)]  # prefix hits, chunked
    submit_requests(sched, prompts, 4, prefix="b")
    syncs = syncs_while(lambda: step_until(sched, admitted(sched)), "scheduler/admission.py", "mem/allocator.py")
    step_until(sched, finished(sched))
    assert not syncs, syncs
    assert sched.stats.cached_tokens > 0, "the test meant to exercise prefix hits"


@pytest.mark.parametrize("page_size", [1, 4])
def test_finishing_requests_release_kv_without_host_device_sync(tmp_path, page_size):
    """Requests finish one group per step while others decode; their KV goes to the radix tree or
    back to the allocator without a host wait (on CUDA the allocator skips its read-back checks)."""
    sched = tiny_scheduler(tmp_path, page_size=page_size)
    for n, prompt in enumerate(random_prompts(12, 23, TINY["vocab_size"], 5)):
        submit_requests(sched, [prompt], 6 + n, prefix=f"f{n}-")  # one finishes per decode step
    step_until(sched, admitted(sched))
    alloc = sched.runner.allocator
    syncs = syncs_while(lambda: step_until(sched, finished(sched)),
                        "mem/allocator.py", "mem/radix_cache.py", "scheduler/release.py")
    idle_read = lines_of(type(alloc).audit)  # the double-free count, read once the last request has left
    assert idle_read & set(syncs), "the scheduler meant to audit the allocator when the batch drained"
    assert not set(syncs) - idle_read, syncs
    alloc.debug_check()
    assert alloc.available_size() + sched.tree_cache.evictable_size() == alloc.capacity
