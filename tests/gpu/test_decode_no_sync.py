"""A decode step under the overlap scheduler never waits for the device on the host, except for the
previous step's sampled tokens (an event wait, which torch's sync debug mode does not count). Nor
does admitting requests to a prefill (cached-prefix hits, chunk continuations, paged allocation),
nor releasing finished requests' KV (the tree takes whole pages, the allocator frees the rest).

`torch.cuda.set_sync_debug_mode("warn")` warns at every synchronizing CUDA call (a blocking copy, a
`.item()`, a `.tolist()` of a device tensor), attributed to the Python line that made it; none may
come from jackfield's own code."""
import json
import os
import warnings

import pytest
import torch

pytestmark = pytest.mark.gpu

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1,
        "eos_token_id": 2, "torch_dtype": "bfloat16"}


@pytest.mark.parametrize("page_size", [1, 4])
def test_decode_steps_make_no_host_device_sync(tmp_path, page_size):
    from jackfield.bench.common import random_prompts, submit_requests
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    settings = load_settings(None, dict(model=str(cfg), load_format="dummy", attention_backend="triton",
                                        page_size=page_size, max_total_tokens=8192, max_running_requests=16,
                                        cuda_graph_max_bs=16)).settings
    sched, _ = build_scheduler(settings, progress=False)
    submit_requests(sched, random_prompts(12, 21, TINY["vocab_size"], 0), 40)
    while sched.waiting or sched.chunked_req is not None:
        sched.step()
    for _ in range(3):
        sched.step()
    import jackfield

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(20):  # decode only: nobody joins or finishes in these steps
                sched.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    while sched.has_work():
        sched.step()
    ours = os.path.dirname(jackfield.__file__)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if w.filename.startswith(ours)]
    assert not syncs, syncs


def test_prefill_admission_and_allocation_make_no_host_device_sync(tmp_path):
    """Radix-cache hits and chunk continuations on a paged pool: the slot of a request's last cached
    token is read on the device, and the allocator counts pages from host lengths."""
    from jackfield.bench.common import random_prompts, submit_requests
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    settings = load_settings(None, dict(model=str(cfg), load_format="dummy", attention_backend="triton",
                                        page_size=4, max_total_tokens=8192, max_running_requests=16,
                                        chunked_prefill_size=64, cuda_graph_max_bs=16)).settings
    sched, _ = build_scheduler(settings, progress=False)
    shared = random_prompts(1, 30, TINY["vocab_size"], 1)[0]
    submit_requests(sched, [shared + tail for tail in random_prompts(2, 9, TINY["vocab_size"], 2)], 4, prefix="a")
    while sched.has_work():  # caches the shared prefix
        sched.step()
    prompts = [shared + tail for tail in random_prompts(6, 45, TINY["vocab_size"], 3)]  # prefix hits, chunked
    submit_requests(sched, prompts, 4, prefix="b")
    import jackfield

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            while sched.waiting or sched.chunked_req is not None:
                sched.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    while sched.has_work():
        sched.step()
    ours = [os.path.join(os.path.dirname(jackfield.__file__), *f) for f in (("scheduler", "admission.py"),
                                                                          ("mem", "allocator.py"))]
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if w.filename in ours]
    assert not syncs, syncs
    assert sched.stats.cached_tokens > 0, "the test meant to exercise prefix hits"


@pytest.mark.parametrize("page_size", [1, 4])
def test_finishing_requests_release_kv_without_host_device_sync(tmp_path, page_size):
    """Requests finish one group per step while others decode; their KV goes to the radix tree or
    back to the allocator without a host wait (on CUDA the allocator skips its read-back checks)."""
    from jackfield.bench.common import random_prompts, submit_requests
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    settings = load_settings(None, dict(model=str(cfg), load_format="dummy", attention_backend="triton",
                                        page_size=page_size, max_total_tokens=8192, max_running_requests=16,
                                        cuda_graph_max_bs=16)).settings
    sched, _ = build_scheduler(settings, progress=False)
    for n, prompt in enumerate(random_prompts(12, 23, TINY["vocab_size"], 5)):
        submit_requests(sched, [prompt], 6 + n, prefix=f"f{n}-")  # one finishes per decode step
    while sched.waiting or sched.chunked_req is not None:
        sched.step()
    import jackfield

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            while sched.has_work():
                sched.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    root = os.path.dirname(jackfield.__file__)
    ours = [os.path.join(root, *f) for f in (("mem", "allocator.py"), ("mem", "radix_cache.py"),
                                             ("scheduler", "release.py"))]
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if w.filename in ours]
    assert not syncs, syncs
    sched.runner.allocator.debug_check()
    assert sched.runner.allocator.available_size() + sched.tree_cache.evictable_size() == \
        sched.runner.allocator.capacity
