"""Shared pieces of the quantization tests: one linear layer through a method, teacher-forced logits
of a tiny model, and the quantization_config each method needs for a Gaussian-weight layer test."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from model_harness import ArchSpec, PagedDriver, build_runner, rel_err, save_tiny_model  # noqa: E402

from jackfield.sdk.layers.linear import Linear  # noqa: E402
from jackfield.sdk.model import ModelBuildContext  # noqa: E402
from jackfield.sdk.model_config import ModelConfig  # noqa: E402

PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [42, 8, 150]]
DECODE = ([3, 4], [9, 77], [1, 2])
# a config per method for a layer test on random weights (checkpoint formats need their config)
LAYER_CONFIGS = {
    "unquantized": {},
    "int4_weight_only": {},
    "gguf": {},
    "fp8": {},
    "int8_wo": {},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "compressed_tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                 "group_size": 128, "symmetric": True}}}},
}


def model_config(qc: dict | None = None) -> ModelConfig:
    base = ModelConfig.from_hf({"architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 64,
                                "num_hidden_layers": 1, "num_attention_heads": 4})
    qc = qc or {}
    return dataclasses.replace(base, quantization=qc.get("quant_method"), quantization_config=qc)


def make_linear(method_cls, weight: torch.Tensor, qc: dict | None = None, bias: torch.Tensor | None = None,
                out_sizes: tuple[int, ...] | None = None, shard_ids: tuple = (None,),
                prefix: str = "model.layers.0.mlp.down_proj") -> Linear:
    """A Linear whose method quantizes `weight` with its own quantizer (load_float), processed."""
    ctx = ModelBuildContext(quant=method_cls(model_config(qc)), dtype=weight.dtype, device=weight.device)
    layer = Linear(weight.shape[1], out_sizes or (weight.shape[0],), ctx, prefix, bias=bias is not None,
                   shard_ids=shard_ids)
    layer.method.load_float(layer, weight)
    for sid, (off, size) in layer.shards.items() if bias is not None else ():
        layer.weight_loader("bias", bias[off:off + size], sid)
    layer.process_weights_after_loading()
    return layer


def gaussian_layer_error(method_cls, qc: dict, n: int = 256, k: int = 512, m: int = 64, seed: int = 0) -> float:
    """Relative Frobenius error of the method's layer output against the float layer on Gaussian
    weights [n, k] and inputs [m, k] (what QuantizationMethod.max_relative_error bounds)."""
    gen = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=gen), torch.randn(m, k, generator=gen)
    layer = make_linear(method_cls, w, qc)
    with torch.no_grad():
        return rel_err(layer(x).float(), x @ w.t())


def forced_logits(model_dir, **settings) -> torch.Tensor:
    """Logits of a prefill of PROMPTS and three teacher-forced decode steps (no greedy divergence)."""
    driver = PagedDriver(build_runner(model_dir, **settings))
    out = [torch.cat(driver.extend(PROMPTS))]
    out += [driver.decode(list(tokens)) for tokens in DECODE]
    return torch.cat(out)


__all__ = ["PROMPTS", "LAYER_CONFIGS", "model_config", "make_linear", "gaussian_layer_error", "forced_logits",
           "rel_err", "build_runner", "PagedDriver", "ArchSpec", "save_tiny_model"]
