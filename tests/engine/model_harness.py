"""Test harness: tiny random Hugging Face checkpoints, and a driver for jackfield's ModelRunner.

`ARCH_SPECS` names one tiny configuration per architecture variant the engine supports.
`save_tiny_model(spec, dir)` builds the transformers model with a fixed seed in float32, fills
every parameter (norm weights and biases included) with random values, so that a weight landing
in the wrong place cannot go unnoticed, and saves it as safetensors.

`PagedDriver` (the kit's, jackfield.testing.paged_driver) runs jackfield's ModelRunner the way the
scheduler does: KV slots come from the runner's TokenAllocator, request rows from the
ReqToTokenPool, and each forward gets a ForwardBatch describing an extend (prefill, possibly over a
cached prefix) or a decode step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from jackfield.config import settings_for
from jackfield.model_runner import ModelRunner
from jackfield.runtime_setup import setup_runtime
from jackfield.testing.paged_driver import PagedDriver, greedy_run  # noqa: F401  (re-exported for the tests)
from jackfield.testing.tiny_models import hf_logits, randomize_, rel_err  # noqa: F401

SMOLLM2_PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Once upon a time, in a small village nestled between two mountains, there lived an old clockmaker who",
    "Translate to French: I like apples.\nFrench:",
    "1, 2, 3, 5, 8, 13,",
]
"""The fixed greedy prompts of the embedded SmolLM2's end-to-end tests."""
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


def checkpoint_cache(tmp_path_factory, save):
    """For a module fixture: name -> (checkpoint dir, transformers model), each written by
    `save(name, directory)` once, on first use."""
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            cache[name] = (directory, save(name, directory))
        return cache[name]

    return get


def build_runner(model_dir, page_size: int = 1, max_running_requests: int = 4, **settings) -> ModelRunner:
    settings = {"device": "cpu", "dtype": "float32", "kv_cache_bytes": 1 << 20, **settings}
    s = settings_for(model=str(model_dir), max_running_requests=max_running_requests, page_size=page_size, **settings)
    return ModelRunner(setup_runtime(s), progress=False)


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


def load_smollm2_hf(saved=None):
    """transformers' SmolLM2 from the embedded GGUF (dequantized by transformers' own reader), float32, eval.
    `saved`: the session's copy of that model (tests/conftest.py's `smollm2_hf_dir` fixture), read
    back instead of running the GGUF reader again."""
    import os

    from transformers import AutoModelForCausalLM

    from jackfield.loader.default_model import default_model_path

    if saved is not None:
        return AutoModelForCausalLM.from_pretrained(str(saved), dtype=torch.float32).eval()
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()
