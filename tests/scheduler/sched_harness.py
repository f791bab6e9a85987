"""Helpers for driving a real Scheduler synchronously over a tiny random Llama (CPU).

`save_tiny_llama(dir)` writes a 2-layer, 64-wide Llama with a 256-token vocabulary and no tokenizer
(token-id prompts only). `Driver` submits requests, steps the scheduler, collects the incremental
outputs per request and can abort between steps. `check_pool_clean` asserts that, with no work
left, every KV slot and table row is back (in the allocator or evictable in the radix tree).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from jackfield.config import settings_for
from jackfield.engine_loop import build_scheduler
from jackfield.io_struct import AbortReq, TokenizedGenerateReq
from jackfield.sampling.params import SamplingParams

VOCAB = 256
EOS = 0


def save_tiny_llama(path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=VOCAB, intermediate_size=128, max_position_embeddings=8192, eos_token_id=EOS,
                      bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run torch with one thread: intra-op threads only add synchronization (and, on a busy
    machine, spin-waits that slow each op by an order of magnitude). Conftests import it to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_scheduler(model_dir: str, **settings):
    settings.setdefault("device", "cpu")
    sched, _ = build_scheduler(settings_for(model=model_dir, **settings), progress=False)
    return sched


@dataclass
class ReqRecord:
    tokens: list[int] = field(default_factory=list)
    finish: object = None
    cached_tokens: int = 0
    messages: int = 0


class Driver:
    def __init__(self, sched):
        self.sched = sched
        self.records: dict[str, ReqRecord] = {}
        self.steps = 0

    def submit(self, rid: str, ids: list[int], max_new_tokens: int, stream: bool = False, lora: str | None = None,
               **params) -> None:
        params.setdefault("temperature", 0.0)
        sp = SamplingParams(max_new_tokens=max_new_tokens, **params)
        self.records[rid] = ReqRecord()
        self.collect(self.sched.handle(TokenizedGenerateReq(rid, list(ids), sp, stream=stream, lora=lora)))

    def abort(self, rid: str) -> None:
        self.collect(self.sched.handle(AbortReq(rid)))

    def collect(self, outs) -> list:
        got = []
        for batch in outs:
            for o in batch.outputs:
                rec = self.records[o.rid]
                assert rec.finish is None, f"{o.rid} got output after it finished"
                rec.tokens += o.new_token_ids
                rec.messages += 1
                rec.cached_tokens = o.cached_tokens
                if o.finished is not None:
                    rec.finish = o.finished
                got.append(o)
        return got

    def step(self) -> list:
        self.steps += 1
        return self.collect(self.sched.step())

    def run(self, max_steps: int = 100_000) -> None:
        while self.sched.has_work():
            self.step()
            assert self.steps < max_steps, "scheduler did not finish"

    def tokens(self, rid: str) -> list[int]:
        return self.records[rid].tokens


def check_pool_clean(sched) -> None:
    """No work left: every slot is free or evictable, every row free, the tree consistent."""
    assert not sched.has_work()
    runner, tree = sched.runner, sched.tree_cache
    alloc, rows = runner.allocator, runner.req_to_token_pool
    alloc.debug_check()
    assert tree.protected_size() == 0
    assert tree.total_size() == tree.all_values().numel() == tree.evictable_size()
    assert alloc.available_size() + tree.evictable_size() == runner.max_total_tokens
    assert rows.available_size() == rows.size
    tree.evict(1 << 40)
    assert tree.total_size() == 0
    assert alloc.available_size() == runner.max_total_tokens
    alloc.debug_check()


def run_alone(model_dir: str, prompts: dict[str, tuple[list[int], int]], params: dict | None = None,
              **settings) -> dict[str, list[int]]:
    """Greedy outputs of each prompt, all submitted to one scheduler with a large pool (no pressure);
    `params` are extra sampling parameters for every request."""
    settings.setdefault("max_total_tokens", 200_000)
    settings.setdefault("max_running_requests", 64)
    settings.setdefault("disable_overlap_schedule", True)
    d = Driver(make_scheduler(model_dir, **settings))
    for rid, (ids, max_new) in prompts.items():
        d.submit(rid, ids, max_new, **(params or {}))
    d.run()
    d.sched.close()
    return {rid: d.tokens(rid) for rid in prompts}
