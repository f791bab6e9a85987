"""Startup decisions taken once per engine: device, dtype, model source, component selection."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from jackfield.config import Settings
from jackfield.embedding import EmbeddingSpec, embedding_spec, headless_config, is_headless
from jackfield.loader.source import ModelSource, resolve_model
from jackfield.plugins import load_plugins
from jackfield.registry import Registry, build_registry
from jackfield.sdk.component import SelectionContext
from jackfield.sdk.gguf import GGUF_FORMAT
from jackfield.sdk.model_config import ModelConfig
from jackfield.selection import Choice, SelectionError, choose_all

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RuntimeSetup:
    settings: Settings
    source: ModelSource
    model_config: ModelConfig
    device: torch.device
    dtype: torch.dtype
    context_len: int
    choices: dict[str, Choice]
    registry: Registry
    pm: object
    embedding: EmbeddingSpec = EmbeddingSpec()


def resolve_device(settings: Settings) -> torch.device:
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is visible")
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def resolve_dtype(settings: Settings, device: torch.device, config: ModelConfig) -> torch.dtype:
    if settings.dtype != "auto":
        return DTYPES[settings.dtype]
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if config.torch_dtype in ("float16", "torch.float16") else torch.bfloat16


def resolve_target(settings: Settings) -> tuple[ModelSource, ModelConfig, torch.device, torch.dtype]:
    """What the settings run on: the model source and config, the device and the dtype (no plugins,
    no GPU memory)."""
    source = resolve_model(settings.model, settings.load_format)
    config = ModelConfig.from_hf(source.hf_config)
    if is_headless(config.architectures):  # a decoder saved without its LM head: its causal-LM plugin runs it
        config = headless_config(config)
    if source.gguf_file is not None:  # selection sees the file's format; plain methods get it dequantized
        config = dataclasses.replace(config, quantization=GGUF_FORMAT)
    device = resolve_device(settings)
    return source, config, device, resolve_dtype(settings, device, config)


def kv_cache_features(settings: Settings) -> frozenset[str]:
    """Attention features the KV cache setting needs: an FP8 cache needs a backend that reads one."""
    return frozenset({"fp8_kv_cache"}) if settings.kv_cache_dtype.startswith("fp8") else frozenset()


def check_checkpoint_format(registry: Registry, config: ModelConfig) -> None:
    """A quantized checkpoint needs an installed method that loads its format (whichever is
    selected): else a SelectionError naming the format, the method and what provides it."""
    fmt = config.quantization
    if fmt is None:
        return
    installed: dict[str, list[str]] = {}
    for info in registry.of_kind("quantization"):
        for f in info.cls.checkpoint_formats:
            if f is not None:
                installed.setdefault(f, []).append(info.name)
    if fmt not in installed:
        from jackfield.sdk.quant import missing_format_error

        raise SelectionError(missing_format_error(fmt, installed))


def setup_runtime(settings: Settings, pm=None, plugin_records=None) -> RuntimeSetup:
    if pm is None:
        pm, plugin_records = load_plugins()
    registry = build_registry(pm, plugin_records or [])
    source, config, device, dtype = resolve_target(settings)
    embedding = embedding_spec(settings, source.path, tuple(source.hf_config.get("architectures") or ()))
    context_len = settings.context_length or config.context_length
    choices = select_components(settings, registry, config, device, dtype)
    return RuntimeSetup(settings, source, config, device, dtype, context_len, choices, registry, pm, embedding)


def select_components(settings: Settings, registry: Registry, config: ModelConfig, device: torch.device,
                      dtype: torch.dtype) -> dict[str, Choice]:
    """The component of every kind the settings select for this model, device and dtype (what the
    engine runs, and what `jackfield plugins doctor` checks). Raises SelectionError."""
    cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    probe = SelectionContext(device=device.type, dtype=str(dtype).removeprefix("torch."), compute_capability=cc,
                             architectures=config.architectures, quantization=config.quantization)
    from jackfield.selection import choose_model

    model_cls = choose_model(registry, probe, dict(settings.plugin_choice)).info.cls
    check_checkpoint_format(registry, config)
    if settings.kv_cache_dtype.startswith("fp8") and cc is not None and cc < (8, 9):
        raise SelectionError(f"kv_cache_dtype {settings.kv_cache_dtype} needs a GPU of compute capability 8.9 or "
                             f"newer (FP8 loads and stores in the KV kernels); this one is {cc[0]}.{cc[1]}")
    features = model_cls.required_features(config) | kv_cache_features(settings)
    if settings.speculative_algorithm not in (None, "", "none"):
        features = features | {"spec_verify"}  # the verify forward's tree attention mask
    layout = model_cls.kv_layout(config)
    ctx = SelectionContext(device=probe.device, dtype=probe.dtype, compute_capability=cc,
                           required_features=features,
                           architectures=config.architectures, quantization=config.quantization,
                           kv_layout=layout.kind, moe_features=model_cls.moe_features(config), head_dim=layout.k_dim)
    return choose_all(registry, settings, ctx)
