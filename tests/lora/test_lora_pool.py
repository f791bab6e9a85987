"""The adapter pool and LoRA scheduling on a tiny random Llama (CPU, float32), through the Engine.

More adapters than device slots, swapped while batches run: every request's tokens must equal its
adapter's tokens run alone, so no wrong adapter is ever applied. Unloading waits for the adapter's
requests. Adapters never share cached prefixes; requests of one adapter do. Bad adapters are refused
with the value named.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from lora_harness import ALL, AdapterSpec, make_adapter
from model_harness import within
from sched_harness import save_tiny_llama

GREEDY = {"temperature": 0, "max_new_tokens": 12}
SPECS = [AdapterSpec(f"a{i}", rank, targets, alpha=2 * rank, rslora=i == 3, seed=i, strength=3.0)
         for i, (rank, targets) in enumerate([(8, ("q_proj", "v_proj")), (4, ALL), (16, ("gate_proj", "up_proj")),
                                              (2, ("down_proj", "o_proj")), (8, ("k_proj", "up_proj")),
                                              (1, ALL)])]
PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [42, 8, 150, 3], [7, 7, 7, 1, 2, 3, 4, 5, 6, 9, 11]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, adapters dir) with SPECS saved by peft."""
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path_factory.mktemp("tiny-lora")
    save_tiny_llama(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    adapters = tmp_path_factory.mktemp("tiny-adapters")
    for spec in SPECS:
        make_adapter(model, adapters, spec)
    return model_dir, adapters


@pytest.fixture(scope="module")
def engine(tiny):
    from jackfield import Engine

    model_dir, adapters = tiny
    paths = [f"{s.name}={adapters / s.name}" for s in SPECS]
    # overlap on (the CUDA default): slots a launched forward reads must survive the next plan's swaps
    with Engine(model=str(model_dir), device="cpu", kv_cache_bytes=1 << 24, lora_paths=paths, max_loras=2,
                max_lora_rank=16, max_running_requests=16, disable_overlap_schedule=False) as eng:
        yield eng


@pytest.fixture(scope="module")
def solo(engine) -> dict:
    """Every (adapter or base, prompt) generated alone."""
    out = {}
    for name in [s.name for s in SPECS] + [None]:
        for i, p in enumerate(PROMPTS):
            out[name, i] = within(60, engine.generate, p, GREEDY, lora_path=name)["token_ids"]
    return out


def test_adapters_change_the_output(solo):
    base = [solo[None, i] for i in range(len(PROMPTS))]
    for spec in SPECS:
        assert [solo[spec.name, i] for i in range(len(PROMPTS))] != base, f"{spec.name} changed nothing"


def test_more_adapters_than_slots_swapped_under_load(engine, solo):
    """A long request of one adapter runs while 36 short ones over the other 5 adapters and the base
    model go through the one slot left: every output is its own, the long one's included."""
    pool = engine.loop.scheduler.runner.lora.pool
    loads = pool.loads
    long_name, long = SPECS[0].name, {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    alone = engine.generate(PROMPTS[1], long, lora_path=long_name)["token_ids"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=engine.generate(PROMPTS[1], long, lora_path=long_name)))
    worker.start()
    names = [s.name for s in SPECS[1:]] + [None]
    jobs = [(names[(5 * k) % len(names)], k % len(PROMPTS)) for k in range(36)]
    outs = within(120, engine.generate, [PROMPTS[i] for _, i in jobs], GREEDY, lora_path=[n for n, _ in jobs])
    worker.join(60)
    wrong = [(n, i) for (n, i), o in zip(jobs, outs) if o["token_ids"] != solo[n, i]]
    assert not wrong, f"requests got another adapter's tokens: {wrong}"
    assert result["out"]["token_ids"] == alone, "the long request's adapter was swapped out under it"
    assert pool.loads - loads >= len(SPECS) - 1, "adapters were not swapped through the slots"
    assert len(pool.resident()) <= 2


def test_max_loras_per_batch_bounds_every_forward(tiny):
    from jackfield import Engine

    model_dir, adapters = tiny
    paths = [f"{s.name}={adapters / s.name}" for s in SPECS[:4]]
    with Engine(model=str(model_dir), device="cpu", kv_cache_bytes=1 << 24, lora_paths=paths, max_loras=4,
                max_loras_per_batch=2, max_lora_rank=16) as eng:
        runner = eng.loop.scheduler.runner
        seen, forward = [], runner.forward

        def spy(fb):
            seen.append({s for s in fb.lora_slots if s >= 0})
            return forward(fb)

        runner.forward = spy
        names = [s.name for s in SPECS[:4]] * 3
        outs = within(120, eng.generate, [PROMPTS[0]] * len(names), GREEDY, lora_path=names)
        alone = {n: eng.generate(PROMPTS[0], GREEDY, lora_path=n)["token_ids"] for n in set(names)}
    assert all(o["token_ids"] == alone[n] for n, o in zip(names, outs))
    assert max(len(s) for s in seen) == 2


def test_a_request_waiting_for_a_slot_blocks_no_one(tiny):
    """One device slot, held by a running request of a0: a request of a1 waits for it while later
    requests of the base model and of a0 run at once; a0 is never evicted under its request, and a1
    gets the slot once a0's requests are done."""
    from sched_harness import Driver, check_pool_clean, make_scheduler

    model_dir, adapters = tiny
    a0, a1 = SPECS[0].name, SPECS[1].name
    sched = make_scheduler(str(model_dir), lora_paths=[f"{n}={adapters / n}" for n in (a0, a1)], max_loras=1,
                           max_lora_rank=16, max_total_tokens=4096, disable_overlap_schedule=True)
    d, pool = Driver(sched), sched.runner.lora.pool
    d.submit("long", PROMPTS[0], 30, lora=a0, ignore_eos=True)
    d.step()
    d.submit("other", PROMPTS[1], 4, lora=a1, ignore_eos=True)
    d.submit("base", PROMPTS[1], 4, ignore_eos=True)
    d.submit("same", PROMPTS[2], 4, lora=a0, ignore_eos=True)
    while d.records["base"].finish is None or d.records["same"].finish is None:
        d.step()
        assert d.steps < 50, "the base and a0 requests were held up behind the waiting a1 request"
        assert [a.name for a in pool.resident()] == [a0], "a0 was evicted while its requests ran"
    assert d.records["long"].finish is None and not d.records["other"].tokens
    d.run()
    assert len(d.tokens("other")) == 4 and [a.name for a in pool.resident()] == [a1]
    d.submit("again", PROMPTS[0], 30, lora=a0, ignore_eos=True)  # swaps a0 back in
    d.run()
    assert d.tokens("again") == d.tokens("long")
    check_pool_clean(sched)
    sched.close()


def test_unload_waits_for_running_requests(engine, solo):
    name = SPECS[1].name
    long = {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True}
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=engine.generate(PROMPTS[0], long, lora_path=name)))
    worker.start()
    sched, deadline, running = engine.loop.scheduler, time.monotonic() + 30, []
    while not running and time.monotonic() < deadline:
        batch = sched.running  # read from this thread: a snapshot of the scheduler thread's batch
        running = [r for r in (list(batch.reqs) if batch is not None else []) if r.lora_name == name]
        time.sleep(0.01)
    assert running, "the adapter's request never ran"
    left = within(60, engine.unload_lora_adapter, name)
    # the scheduler finishes the request before it answers the unload (the caller's thread may not have run yet)
    assert all(r.finished for r in running), "unload returned while the adapter's request was still running"
    assert name not in {a["name"] for a in left}
    with pytest.raises(ValueError, match=f"unknown LoRA adapter '{name}'"):
        engine.generate(PROMPTS[0], GREEDY, lora_path=name)
    worker.join(10)
    assert result["out"]["token_ids"][:12] == solo[name, 0] and len(result["out"]["token_ids"]) == 200
    # loading it again under the same name gives the same tokens
    adapters = {a["name"]: a["path"] for a in engine.list_lora_adapters()}
    engine.load_lora_adapter(name, str(adapters[SPECS[0].name]).replace(SPECS[0].name, name))
    assert engine.generate(PROMPTS[0], GREEDY, lora_path=name)["token_ids"] == solo[name, 0]


def test_adapters_never_share_cached_prefixes(engine, solo):
    engine.flush_cache()
    prompt = list(range(3, 40))
    a, b = SPECS[0].name, SPECS[2].name
    first = engine.generate(prompt, GREEDY, lora_path=a)
    assert first["usage"]["cached_tokens"] == 0
    other = engine.generate(prompt, GREEDY, lora_path=b)
    assert other["usage"]["cached_tokens"] == 0, "adapter b reused adapter a's KV"
    base = engine.generate(prompt, GREEDY)
    assert base["usage"]["cached_tokens"] == 0, "the base model reused an adapter's KV"
    again = engine.generate(prompt, GREEDY, lora_path=a)
    assert again["usage"]["cached_tokens"] >= len(prompt) - 1 and again["token_ids"] == first["token_ids"]


def test_radix_namespaces_and_drop():
    from jackfield.mem.allocator import TokenAllocator
    from jackfield.mem.radix_cache import RadixCache
    from jackfield.mem.req_to_token import ReqToTokenPool

    alloc = TokenAllocator(64, 1, torch.device("cpu"))
    cache = RadixCache(ReqToTokenPool(4, 32, torch.device("cpu")), alloc, 1)
    ids = [1, 2, 3, 4]
    slots = {ns: alloc.alloc(4) for ns in (None, 7, 8)}
    for ns, s in slots.items():
        assert cache.insert(ids, s, ns) == 0
    for ns, s in slots.items():
        assert torch.equal(cache.match_prefix(ids, ns).indices, s)
    assert cache.match_prefix(ids, 9).indices.numel() == 0
    free = alloc.available_size()
    assert cache.drop_namespace(7) == 4 and alloc.available_size() == free + 4
    assert cache.match_prefix(ids, 7).indices.numel() == 0
    assert torch.equal(cache.match_prefix(ids, 8).indices, slots[8]) and cache.evictable_size() == 8
    assert cache.evict(100) == 8 and cache.total_size() == 0


# ---- bad adapters ------------------------------------------------------------------------------
def _write(directory, config: dict, tensors: dict):
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def _config(**kw):
    return {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "base_model_name_or_path": "tiny", **kw}


def _q(layer=0, rank=4, hidden=64, out=64):
    p = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
    return {f"{p}.lora_A.weight": torch.randn(rank, hidden), f"{p}.lora_B.weight": torch.randn(out, rank)}


@pytest.mark.parametrize("case, config, tensors, message", [
    ("rank", _config(r=32), _q(rank=32), "rank r=32 exceeds max_lora_rank 16"),
    ("target", _config(target_modules=["lm_head"]), _q(), "target module 'lm_head'"),
    ("embedding", _config(), {"base_model.model.model.embed_tokens.lora_embedding_A": torch.randn(4, 256)},
     "is not a lora_A / lora_B weight"),
    ("other_base_shape", _config(base_model_name_or_path="meta-llama/Llama-3.1-8B"), _q(hidden=4096, out=4096),
     "another base model? its base_model_name_or_path is 'meta-llama/Llama-3.1-8B'"),
    ("other_base_layers", _config(base_model_name_or_path="big"), _q(layer=30), "the model has no layer"),
    ("dora", _config(use_dora=True), _q(), "use_dora=true is not supported"),
    ("rank_pattern", _config(rank_pattern={"q_proj": 8}), _q(), "rank_pattern"),
])
def test_bad_adapters_are_refused(engine, tmp_path, case, config, tensors, message):
    path = _write(tmp_path / case, config, tensors)
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("(", r"\(")):
        engine.load_lora_adapter(case, str(path))
    assert case not in {a["name"] for a in engine.list_lora_adapters()}


def test_missing_directory_and_duplicate_name(engine, tmp_path):
    with pytest.raises(ValueError, match="no adapter directory"):
        engine.load_lora_adapter("nothing", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="already loaded"):
        engine.load_lora_adapter(SPECS[0].name, str(tmp_path))
    with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'"):
        engine.generate(PROMPTS[0], GREEDY, lora_path="nope")
