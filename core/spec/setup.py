"""Building the engine's speculative decoder: its SpecRuntime (settings, the target, and factories
for draft models) and the memory a draft model needs next to the target's KV pool."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from jackfield.loader.source import resolve_model
from jackfield.loader.weights import iter_safetensors
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.model_config import ModelConfig
from jackfield.sdk.spec import SpecRuntime, SpeculativeDecoder
from jackfield.selection import SelectionError, choose, choose_model
from jackfield.spec.draft_runner import DraftRunner


VERIFY_GRAPH_MAX_BS = 64  # past this, verify forwards are compute bound and run eagerly


def decoder_class(setup) -> type[SpeculativeDecoder] | None:
    choice = setup.choices.get("speculative")
    return choice.info.cls if choice is not None and choice.info is not None else None


def load_model(setup, path: str) -> tuple[torch.nn.Module, ModelConfig]:
    """A checkpoint built and loaded like the target: its architecture and quantization chosen by
    the same registry, on the target's device and dtype."""
    source = resolve_model(path, "auto")
    config = ModelConfig.from_hf(source.hf_config)
    probe = replace(_ctx(setup), architectures=config.architectures, quantization=config.quantization,
                    required_features=frozenset())
    model_cls = choose_model(setup.registry, probe, dict(setup.settings.plugin_choice)).info.cls
    quant = choose(setup.registry, "quantization", "auto", probe).info.cls(config)
    ctx = ModelBuildContext(quant=quant, dtype=setup.dtype, device=setup.device)
    with torch.device(setup.device):
        model = model_cls(config, ctx, max_positions=setup.context_len + 1)
    model.load_weights(iter_safetensors(source.path, progress=False))
    return model.eval(), config


def _ctx(setup):
    from jackfield.sdk.component import SelectionContext

    cc = torch.cuda.get_device_capability(setup.device) if setup.device.type == "cuda" else None
    return SelectionContext(device=setup.device.type, dtype=str(setup.dtype).removeprefix("torch."),
                            compute_capability=cc)


def attention_class(setup) -> type:
    """The attention backend class draft runners use: the one the target verifies with."""
    choice = setup.choices.get("prefill_attention") or setup.choices["attention"]
    if choice.info is None:
        raise SelectionError("speculative decoding needs an attention backend")
    return choice.info.cls


def draft_kv_tokens(runner) -> int:
    """KV rows a draft runner gets: the target's pool plus every running request's draft tree."""
    rt = runner.setup.settings
    tree = rt.speculative_num_steps * rt.speculative_eagle_topk + rt.speculative_num_draft_tokens + 2
    return runner.max_total_tokens + runner.max_running_requests * tree


def draft_memory(settings) -> tuple[int, int]:
    """(weight bytes, KV bytes per token) of the draft checkpoint the settings name, read without
    loading it, so the target's KV budget can leave room for it. (0, 0) without one."""
    path = settings.speculative_draft_model_path
    if not path or settings.speculative_algorithm not in ("draft_model", "eagle"):
        return 0, 0
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"speculative_draft_model_path '{path}' does not exist")
    source = resolve_model(str(p), "auto")
    config = ModelConfig.from_hf(source.hf_config)
    weights = sum(f.stat().st_size for f in source.path.glob("*.safetensors"))
    dtype_bytes = 2 if settings.device != "cpu" and settings.dtype != "float32" else 4
    return weights, 2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype_bytes


def build_decoder(setup, runner, cls: type[SpeculativeDecoder] | None = None) -> SpeculativeDecoder | None:
    """The chosen decoder (or `cls`), constructed with its SpecRuntime; None when speculation is off."""
    cls = cls or decoder_class(setup)
    if cls is None:
        return None
    s = setup.settings

    def make_draft_runner(model, config, num_tokens: int | None = None) -> DraftRunner:
        return DraftRunner(model, config, attention_class(setup), num_tokens or draft_kv_tokens(runner),
                           runner.max_running_requests, runner.context_len, runner.device, runner.dtype)

    runtime = SpecRuntime(
        settings=s, model_config=setup.model_config, device=runner.device, dtype=runner.dtype,
        num_draft_tokens=s.speculative_num_draft_tokens, num_steps=s.speculative_num_steps,
        eagle_topk=s.speculative_eagle_topk, draft_model_path=s.speculative_draft_model_path,
        max_running_requests=runner.max_running_requests, context_len=runner.context_len, target=runner.model,
        load_model=lambda path: load_model(setup, path), make_draft_runner=make_draft_runner)
    decoder = cls(runtime)
    if decoder.needs_hidden_states:
        runner.capture_hidden = True
        if decoder.aux_hidden_layers:
            inner = getattr(runner.model, "model", None)
            if not hasattr(inner, "capture_layers"):
                raise ValueError(f"speculative decoder '{cls.name}' reads target layers {decoder.aux_hidden_layers}, "
                                 f"but {type(runner.model).__name__} cannot capture layer inputs")
            inner.capture_layers = tuple(decoder.aux_hidden_layers)
        if runner.graph_runner is not None:  # capture the decode graphs again, with the hidden states
            from jackfield.cuda_graph import CudaGraphRunner

            runner.graph_runner = None
            runner.graph_runner = CudaGraphRunner(runner, s.cuda_graph_max_bs, compile_model=s.enable_torch_compile)
    if runner.graph_runner is not None and "cuda_graph_verify" in attention_class(setup).capabilities.features:
        from jackfield.spec.verify_graph import VerifyGraphRunner

        runner.verify_graphs = VerifyGraphRunner(runner, s.speculative_num_draft_tokens,
                                                 min(s.cuda_graph_max_bs, VERIFY_GRAPH_MAX_BS))
    return decoder
