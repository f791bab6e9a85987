"""Tiny random checkpoints of an architecture, and a ModelRunner that serves one with the kit's components.

`tiny_checkpoint(cls)` writes the class's `tiny_config()` to a temporary directory with random
weights saved by transformers itself (every parameter randomized, norms and biases included, so a
weight landing in the wrong place cannot go unnoticed), and keeps transformers' model to compare
logits with. When transformers does not know the config's `model_type`, only config.json is
written and the model runs on dummy weights.

`kit_runner(cls, checkpoint, device, dtype)` builds the engine's own ModelRunner through the
engine's own startup code (`setup_runtime`), with a plugin manager holding just the class under test,
the kit's reference attention and plain weights, and the installed MoE dispatchers and attention
backends (picked only when the reference components cannot serve the model).
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jackfield.hookspecs import hookimpl

KV_CACHE_BYTES = 1 << 20
MAX_TOTAL_TOKENS = 4096


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


def build_hf_model(hf_config: dict, seed: int = 0) -> Any | None:
    """transformers' model for a config dict (float32, every weight randomized), or None when
    transformers does not know its model_type."""
    import transformers

    fields = {k: v for k, v in hf_config.items() if k not in ("model_type", "transformers_version")}
    try:
        config = transformers.AutoConfig.for_model(hf_config.get("model_type", ""), **fields)
    except (ValueError, KeyError):
        return None
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize_(model, seed)
    return model.eval()


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    """transformers' logits at every position of `ids`: [len(ids), vocab] float32."""
    return model(torch.tensor([ids], dtype=torch.long)).logits[0].float()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).norm() / ref.double().norm())


@dataclass(frozen=True)
class TinyCheckpoint:
    directory: Path
    hf_config: dict
    hf_model: Any | None  # transformers' model on the same weights; None without a transformers model

    @property
    def load_format(self) -> str:
        return "safetensors" if self.hf_model is not None else "dummy"


def kit_config(cls) -> dict:
    """`cls.tiny_config()`, with `architectures` naming the class (so selection finds it)."""
    config = cls.tiny_config()
    if not isinstance(config, dict):
        raise TypeError(f"{cls.__name__}.tiny_config() returned {type(config).__name__}, not a config dict"
                        if config is not None else
                        f"transformers knows none of {cls.__name__}.architectures {list(cls.architectures)}; "
                        "override the classmethod tiny_config() to return a tiny config.json-style dict")
    config = dict(config)
    if not set(config.get("architectures") or ()) & set(cls.architectures):
        config["architectures"] = [cls.architectures[0]]
    return config


@functools.lru_cache(maxsize=8)
def tiny_checkpoint(cls, seed: int = 0) -> TinyCheckpoint:
    """The class's tiny checkpoint, built once per class and process (removed at exit)."""
    config = kit_config(cls)
    directory = Path(tempfile.mkdtemp(prefix="jackfield-kit-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    hf = build_hf_model(config, seed)
    if hf is not None:
        from safetensors.torch import save_file

        tensors, seen = {}, set()
        for name, tensor in hf.state_dict().items():  # a tied lm_head shares the embedding's storage
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensors[name] = tensor.contiguous()
        save_file(tensors, str(directory / "model.safetensors"))
        config = {**hf.config.to_dict(), "architectures": config["architectures"]}
    (directory / "config.json").write_text(json.dumps(config))
    return TinyCheckpoint(directory, config, hf)


@functools.lru_cache(maxsize=1)
def installed_helpers() -> tuple[type, ...]:
    """Installed attention backends and MoE dispatchers, one class per name (for models the
    reference components cannot serve, e.g. ones that need an MoE dispatcher)."""
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    registry = build_registry(*load_plugins())
    seen: dict[tuple[str, str], type] = {}
    for kind in ("attention", "moe"):
        for info in registry.of_kind(kind):
            seen.setdefault((kind, info.name), info.cls)
    return tuple(seen.values())


class KitPlugin:
    """The in-process plugin the kit's engine is built from."""

    def __init__(self, model_cls: type, helpers: tuple[type, ...]):
        from jackfield.testing.reference_components import KitPlainWeights, KitReferenceAttention

        self.model_cls, self.plain = model_cls, KitPlainWeights
        self.attention = (KitReferenceAttention, *(c for c in helpers if c.kind == "attention"
                                                   and c.name != KitReferenceAttention.name))
        self.moe = tuple(c for c in helpers if c.kind == "moe")

    @hookimpl
    def jackfield_register_attention_backends(self, register):
        for cls in self.attention:
            register(cls)

    @hookimpl
    def jackfield_register_quantization_methods(self, register):
        register(self.plain)

    @hookimpl
    def jackfield_register_moe_dispatchers(self, register):
        for cls in self.moe:
            register(cls)

    @hookimpl
    def jackfield_register_model_architectures(self, register):
        register(self.model_cls)


def kit_runner(cls, checkpoint: TinyCheckpoint, device: str, dtype: str, page_size: int = 1):
    """A ModelRunner for the tiny checkpoint, built by the engine's startup code around `cls`."""
    from jackfield.config import load_settings
    from jackfield.model_runner import ModelRunner
    from jackfield.plugins import load_plugins
    from jackfield.runtime_setup import setup_runtime

    settings = load_settings(env={}, cli=dict(  # the user's JACKFIELD_* variables do not apply here
        model=str(checkpoint.directory), load_format=checkpoint.load_format, device=device, dtype=dtype,
        attention_backend="auto", quantization="kit_plain", moe_backend="auto", kv_cache_bytes=KV_CACHE_BYTES,
        max_total_tokens=MAX_TOTAL_TOKENS, max_running_requests=4, page_size=page_size,
        disable_cuda_graph=True)).settings
    pm, records = load_plugins(env={"JACKFIELD_PLUGINS": ","}, extra=[("jackfield-kit", KitPlugin(cls, installed_helpers()))])
    return ModelRunner(setup_runtime(settings, pm, records), progress=False)
