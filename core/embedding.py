"""Serving a decoder model as an embedder: detection, pooling choice, headless checkpoints.

Every model answers embedding requests (a prefill-only request whose final hidden states are
pooled, `scheduler/prompt_readout.py`). A model is *served as an embedding model* (generation
routes refused, `is_generation: false`) when `--is-embedding` says so, or, with it unset, when its
directory says so the way SGLang and vLLM read it:

* a sentence-transformers layout (`modules.json` with a Pooling module, as Qwen3-Embedding and
  gte-Qwen2 ship): its `pooling_mode_lasttoken` / `pooling_mode_mean_tokens` picks the pooling and a
  Normalize module turns normalization on;
* a headless architecture (`Qwen3Model`, `LlamaModel`: a decoder saved without its LM head).

A headless checkpoint names its tensors without the `model.` prefix and has no `lm_head`; it is
loaded into the matching `*ForCausalLM` plugin with the prefix added and the head tied to the token
embeddings (the head's logits are never returned: generation is refused for embedding models).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

HEADLESS_SUFFIX = "Model"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"
ST_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean"}


@dataclass(frozen=True)
class EmbeddingSpec:
    """How this model's embeddings are made, and whether it is served as an embedding model."""

    is_embedding: bool = False  # served as an embedder: generation routes answer 400
    pooling: str = "last"       # "last" | "mean"
    normalize: bool = True      # unit L2 norm
    headless: bool = False      # the checkpoint is a decoder without its LM head
    reason: str = "generative model"


def is_headless(architectures: Iterable[str]) -> bool:
    archs = list(architectures)
    return bool(archs) and all(a.endswith(HEADLESS_SUFFIX) and not a.endswith("ForCausalLM") for a in archs)


def causal_architectures(architectures: tuple[str, ...]) -> tuple[str, ...]:
    """`Qwen3Model` -> `Qwen3ForCausalLM`: the plugin that runs a headless checkpoint."""
    return tuple(a[:-len(HEADLESS_SUFFIX)] + "ForCausalLM" for a in architectures)


def sentence_transformers_pooling(model_dir: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) from a sentence-transformers layout, or None without one."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {modules_file}: {exc}") from exc
    pooling_dir = next((m.get("path", "") for m in modules if m.get("type") == ST_POOLING), None)
    if pooling_dir is None:
        return None
    config_file = model_dir / pooling_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    modes = [mode for key, mode in ST_MODES.items() if config.get(key)]
    other = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in ST_MODES]
    if other or len(modes) > 1:
        raise ValueError(f"{config_file}: pooling {', '.join(other + modes)} is not supported "
                         f"(supported: {', '.join(ST_MODES)})")
    return (modes[0] if modes else "mean"), any(m.get("type") == ST_NORMALIZE for m in modules)


def embedding_spec(settings, model_dir: Path, architectures: tuple[str, ...]) -> EmbeddingSpec:
    """Decide from `--is-embedding`, `--embedding-pooling`, `--embedding-normalize` and the model directory."""
    headless = is_headless(architectures)
    st = sentence_transformers_pooling(model_dir)
    if settings.is_embedding is not None:
        is_embedding, reason = settings.is_embedding, "--is-embedding" if settings.is_embedding else "--no-is-embedding"
    elif st is not None:
        is_embedding, reason = True, "sentence-transformers pooling config (modules.json)"
    elif headless:
        is_embedding, reason = True, f"headless architecture {list(architectures)}"
    else:
        is_embedding, reason = False, "generative model"
    pooling, normalize = st or ("last", True)
    if settings.embedding_pooling != "auto":
        pooling = settings.embedding_pooling
    if settings.embedding_normalize is not None:
        normalize = settings.embedding_normalize
    return EmbeddingSpec(is_embedding, pooling, normalize, headless, reason)


def headless_config(config):
    """The ModelConfig a headless checkpoint is built with: the causal-LM plugin's architecture and
    a head tied to the embeddings (there is no head to load)."""
    return replace(config, architectures=causal_architectures(config.architectures), tie_word_embeddings=True)


def headless_weights(weights: Iterable[tuple[str, object]]) -> Iterator[tuple[str, object]]:
    """A headless checkpoint's tensors under the causal-LM names (`layers.0...` -> `model.layers.0...`)."""
    for name, tensor in weights:
        yield (name if name.startswith("model.") else "model." + name), tensor


def normalized(vec: list[float]) -> list[float]:
    """`vec` scaled to unit L2 norm (a zero vector stays zero)."""
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm > 0 else list(vec)
