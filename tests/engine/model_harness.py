"""Test harness: tiny random Hugging Face checkpoints, and a driver for jackfield's ModelRunner.

`ARCH_SPECS` names one tiny configuration per architecture variant the engine supports.
`save_tiny_model(spec, dir)` builds the transformers model with a fixed seed in float32, fills
every parameter (norm weights and biases included) with random values, so that a weight landing
in the wrong place cannot go unnoticed, and saves it as safetensors.

`PagedDriver` runs jackfield's ModelRunner the way the scheduler does: KV slots come from the
runner's TokenAllocator, request rows from the ReqToTokenPool, and each forward gets a
ForwardBatch describing an extend (prefill, possibly over a cached prefix) or a decode step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jackfield.config import settings_for
from jackfield.model_runner import ModelRunner
from jackfield.runtime_setup import setup_runtime
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode

VOCAB = 160
BASE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            vocab_size=VOCAB, intermediate_size=128, max_position_embeddings=256, rms_norm_eps=1e-6,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    config_cls: str                 # transformers config class name
    overrides: dict = field(default_factory=dict)
    seed: int = 0

    def make_config(self):
        import transformers

        return getattr(transformers, self.config_cls)(**{**BASE, **self.overrides})


ARCH_SPECS = [
    ArchSpec("llama", "LlamaConfig", {"tie_word_embeddings": False}),
    ArchSpec("llama_tied", "LlamaConfig", {"tie_word_embeddings": True}, seed=1),
    ArchSpec("llama_llama3_rope", "LlamaConfig", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, seed=2),
    ArchSpec("llama_linear_rope", "LlamaConfig", {"rope_parameters": {
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}, seed=3),
    ArchSpec("llama_yarn_rope", "LlamaConfig", {"rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}}, seed=4),
    ArchSpec("qwen2", "Qwen2Config", {"tie_word_embeddings": False, "rope_parameters": {
        "rope_type": "default", "rope_theta": 1000000.0}}, seed=5),
    ArchSpec("qwen3", "Qwen3Config", {"tie_word_embeddings": True, "attention_bias": False}, seed=6),
    ArchSpec("mistral_sliding", "MistralConfig", {"sliding_window": 8, "tie_word_embeddings": False}, seed=7),
    # windowed layers from max_window_layers on, full attention below (config.layer_types)
    ArchSpec("qwen2_sliding_mixed", "Qwen2Config", {"use_sliding_window": True, "sliding_window": 8,
                                                    "max_window_layers": 1, "tie_word_embeddings": False}, seed=8),
    ArchSpec("qwen3_sliding_mixed", "Qwen3Config", {"use_sliding_window": True, "sliding_window": 8,
                                                    "max_window_layers": 2, "tie_word_embeddings": True}, seed=9),
]
SPECS = {s.name: s for s in ARCH_SPECS}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Replace every parameter with seeded random values of a sensible scale (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                values = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                values = 0.2 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name or name.startswith("lm_head"):
                values = 0.5 * torch.randn(p.shape, generator=gen)
            else:
                values = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
            p.copy_(values.to(p.dtype))


def build_hf_model(spec: ArchSpec):
    import transformers

    config = spec.make_config()
    torch.manual_seed(spec.seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_(model, spec.seed)
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.eval()


def save_tiny_model(spec: ArchSpec, directory: Path):
    """Save the spec's random model as safetensors in `directory`; returns the HF model (eval, fp32)."""
    model = build_hf_model(spec)
    model.save_pretrained(str(directory), safe_serialization=True)
    return model


def build_runner(model_dir, page_size: int = 1, max_running_requests: int = 4, **settings) -> ModelRunner:
    s = settings_for(model=str(model_dir), device="cpu", dtype="float32", kv_cache_bytes=1 << 20,
                     max_running_requests=max_running_requests, page_size=page_size, **settings)
    return ModelRunner(setup_runtime(s), progress=False)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).norm() / ref.double().norm())


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    """HF logits at every position of `ids`: [len(ids), vocab] float32."""
    return model(torch.tensor([ids], dtype=torch.long)).logits[0].float()


class PagedDriver:
    """Drives a ModelRunner over the paged KV cache, one request row per sequence."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.table = runner.req_to_token_pool.req_to_token
        self.rows: list[int] = []
        self.ids: list[list[int]] = []    # tokens whose KV is cached, per sequence

    def _slot(self, seq: int, pos: int) -> int:
        return int(self.table[self.rows[seq], pos])

    def new_sequence(self) -> int:
        row = self.runner.req_to_token_pool.alloc()
        assert row is not None, "no free request row"
        self.rows.append(row)
        self.ids.append([])
        return len(self.rows) - 1

    def extend(self, new_ids: list[list[int]], seqs: list[int | None] | None = None,
               all_logits: bool = True) -> list[torch.Tensor]:
        """Compute `new_ids[i]` on top of sequence `seqs[i]`'s cached tokens, all in one EXTEND
        forward; a None entry (or `seqs` None) starts a new sequence. Returns logits per
        sequence: one row per new token with `all_logits`, else the last token's only."""
        r = self.runner
        seqs = [None] * len(new_ids) if seqs is None else list(seqs)
        seqs = [self.new_sequence() if s is None else s for s in seqs]
        prefix = [len(self.ids[s]) for s in seqs]
        ext = [len(x) for x in new_ids]
        last = [self._slot(s, p - 1) if p else -1 for s, p in zip(seqs, prefix)]
        slots = r.allocator.alloc_extend(prefix, ext, last)
        assert slots is not None, "KV pool exhausted"
        off = 0
        positions = []
        for s, p, e in zip(seqs, prefix, ext):
            self.table[self.rows[s], p:p + e] = slots[off:off + e].to(torch.int32)
            positions.extend(range(p, p + e))
            off += e
        ext_t = torch.tensor(ext, dtype=torch.int32)
        start = torch.zeros_like(ext_t)
        start[1:] = torch.cumsum(ext_t, 0)[:-1]
        seq_cpu = tuple(p + e for p, e in zip(prefix, ext))
        total = sum(ext)
        logits_idx = torch.arange(total) if all_logits else (start + ext_t - 1).long()
        fb = ForwardBatch(
            mode=ForwardMode.EXTEND, batch_size=len(seqs),
            input_ids=torch.tensor([t for x in new_ids for t in x], dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            req_pool_indices=torch.tensor([self.rows[s] for s in seqs], dtype=torch.int64),
            seq_lens=torch.tensor(seq_cpu, dtype=torch.int32), out_cache_loc=slots, req_to_token=self.table,
            kv_pool=r.kv_pool, attn_backend=r.attn_backend, seq_lens_cpu=seq_cpu,
            extend_prefix_lens=torch.tensor(prefix, dtype=torch.int32), extend_seq_lens=ext_t,
            extend_start_loc=start, extend_prefix_lens_cpu=tuple(prefix), extend_seq_lens_cpu=tuple(ext),
            logits_indices=logits_idx)
        logits = r.forward(fb).float()
        for s, x in zip(seqs, new_ids):
            self.ids[s].extend(x)
        if not all_logits:
            return list(logits)
        return list(logits.split(ext))

    def decode(self, tokens: list[int], seqs: list[int] | None = None) -> torch.Tensor:
        """One DECODE step: token `tokens[i]` appended to sequence `seqs[i]`. Returns [B, vocab]."""
        r = self.runner
        seqs = list(range(len(self.rows))) if seqs is None else seqs
        kv = [len(self.ids[s]) for s in seqs]
        last = [self._slot(s, n - 1) for s, n in zip(seqs, kv)]
        loc = r.allocator.alloc_decode([n + 1 for n in kv], last)
        assert loc is not None, "KV pool exhausted"
        pool = torch.tensor([self.rows[s] for s in seqs], dtype=torch.int64)
        self.table[pool, torch.tensor(kv)] = loc.to(torch.int32)
        positions = torch.tensor(kv, dtype=torch.int64)
        fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=len(seqs), input_ids=torch.tensor(tokens, dtype=torch.int64),
            positions=positions, req_pool_indices=pool, seq_lens=(positions + 1).to(torch.int32),
            out_cache_loc=loc, req_to_token=self.table, kv_pool=r.kv_pool, attn_backend=r.attn_backend,
            seq_lens_cpu=tuple(n + 1 for n in kv))
        logits = r.forward(fb).float()
        for s, t in zip(seqs, tokens):
            self.ids[s].append(t)
        return logits

    def release(self) -> None:
        """Free every sequence's KV pages and request rows."""
        r = self.runner
        for row, ids in zip(self.rows, self.ids):
            if ids:
                r.allocator.free(self.table[row, :len(ids)].long())
            r.req_to_token_pool.free(row)
        self.rows, self.ids = [], []


def greedy_run(driver: PagedDriver, prompts: list[list[int]], steps: int) -> tuple[list[list[torch.Tensor]], list[list[int]]]:
    """Prefill `prompts` in one extend batch, then `steps` batched greedy decode steps.

    Returns, per prompt, the logits of every computed position (prompt positions, then one per
    decode step) and the full token sequence that was fed (prompt + `steps` generated tokens).
    """
    pre = driver.extend(prompts)
    logits = [[row for row in p] for p in pre]
    seqs = [list(p) for p in prompts]
    nxt = [int(p[-1].argmax()) for p in pre]
    for _ in range(steps):
        for s, t in zip(seqs, nxt):
            s.append(t)
        out = driver.decode(nxt)
        for i, row in enumerate(out):
            logits[i].append(row)
        nxt = [int(row.argmax()) for row in out]
    return logits, seqs


def within(seconds: float, fn, *args, **kwargs):
    """Run fn(*args, **kwargs) and return its result, failing the test (instead of hanging the
    run) if it has not answered within `seconds` (an Engine request lost by the scheduler)."""
    import threading

    import pytest

    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="test-deadline")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{getattr(fn, '__qualname__', fn)} did not return within {seconds:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]
