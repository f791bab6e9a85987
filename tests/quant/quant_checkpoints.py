"""Tiny quantized checkpoints for the loader tests, written with our own quantizers in the exact
tensor layouts of each format (no downloads).

`write_quantized(model, directory, fmt, **options)` saves the HF model `model` (a tiny random
Llama from tests/engine/model_harness.py) as a checkpoint of format `fmt` and, next to it in
`directory / "reference"`, the float checkpoint of the same model with every quantized weight
replaced by its dequantized value: what the quantized model must compute (exactly, for
weight-only formats; up to activation quantization for FP8 W8A8).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from jackfield_plugins.quant import fp8_numerics as fp8
from jackfield_plugins.quant import int4_numerics as int4
from jackfield_plugins.quant.int8_wo import quantize_int8

LINEAR = re.compile(r"^(?P<module>model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)\.weight$")
FORMATS = ("fp8", "awq", "gptq", "ct-fp8", "ct-int8", "ct-w4a16")


def _fp8(w: torch.Tensor, scheme: str, block):
    """FP8 tensors (codes, scale) and the dequantized weight."""
    if scheme == "tensor":
        q, s = fp8.quantize_per_tensor(w)
        return q, s, q.float() * s
    if scheme == "channel":
        q, s = fp8.quantize_per_channel(w)
        return q, s, fp8.dequantize_weight(q, s, None)
    q, s = fp8.quantize_blockwise(w, block)
    return q, s, fp8.dequantize_weight(q, s, block)


def _int4(w: torch.Tensor, group: int, symmetric: bool, act_order: bool, seed: int):
    k = w.shape[1]
    g_idx = torch.arange(k) // group
    if act_order:  # a random column order, `group` columns per group, as GPTQ's desc_act writes it
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(k, dtype=torch.long)
        g_idx[perm] = torch.arange(k) // group
    q, scales, zeros = int4.quantize(w, group, symmetric, g_idx)
    return q, scales, zeros, g_idx


def quantize_tensors(module: str, w: torch.Tensor, fmt: str, opts: dict, seed: int):
    """(checkpoint tensors named module.<name>, the dequantized float weight)."""
    out = {}
    if fmt in ("fp8", "ct-fp8"):
        scheme = opts.get("scheme", "channel")
        q, s, ref = _fp8(w, scheme, opts.get("block"))
        scale_name = "weight_scale_inv" if fmt == "fp8" and scheme == "block" else "weight_scale"
        if fmt == "ct-fp8" and scheme != "block":
            s = s.reshape(-1, 1) if scheme == "channel" else s.reshape(1)
        out = {"weight": q, scale_name: s}
        if opts.get("static"):
            out["input_scale"] = torch.tensor(0.02 if fmt == "fp8" else [0.02])
    elif fmt == "ct-int8":
        q, s = quantize_int8(w)
        ref = q.float() * s[:, None]
        out = {"weight": q, "weight_scale": s.reshape(-1, 1)}
    else:
        group = opts.get("group", 32)
        group = w.shape[1] if group == -1 else group  # -1: one group per row
        sym, act = opts.get("symmetric", fmt == "gptq"), opts.get("act_order", False)
        if fmt == "ct-w4a16":
            sym = opts.get("symmetric", True)
        q, scales, zeros, g_idx = _int4(w, group, sym, act, seed)
        scales = scales.to(torch.bfloat16 if fmt == "ct-w4a16" else torch.float16)  # as the formats store them
        ref = int4.dequantize(q, scales, zeros, g_idx) if opts.get("reference", True) else None
        if fmt == "awq":
            out = int4.to_awq(q, scales, zeros)
        elif fmt == "gptq":
            out = int4.to_gptq(q, scales, zeros, g_idx, v2=opts.get("v2", False))
        else:
            out = int4.to_compressed(q, scales, None if sym else zeros)
            if act:
                out["weight_g_idx"] = g_idx.to(torch.int32)
    return {f"{module}.{k}": v for k, v in out.items()}, ref


def quant_config(fmt: str, opts: dict) -> dict:
    if fmt == "fp8":
        qc = {"quant_method": "fp8", "activation_scheme": "static" if opts.get("static") else "dynamic"}
        if opts.get("scheme") == "block":
            qc["weight_block_size"] = list(opts["block"])
        return qc
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": opts.get("group", 32), "zero_point": True,
                "version": "gemm"}
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": opts.get("group", 32),
                "desc_act": opts.get("act_order", False), "sym": opts.get("symmetric", True),
                "checkpoint_format": "gptq_v2" if opts.get("v2") else "gptq", "lm_head": opts.get("lm_head", False)}
    if fmt == "ct-fp8":
        scheme = opts.get("scheme", "channel")
        weights = {"num_bits": 8, "type": "float", "strategy": scheme, "symmetric": True, "dynamic": False}
        acts = {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True, "symmetric": True}
        if scheme == "block":
            weights["block_structure"] = list(opts["block"])
            acts = {**acts, "strategy": "group", "group_size": opts["block"][1]}
        if opts.get("static"):
            acts = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
        return _ct("float-quantized", weights, acts)
    if fmt == "ct-int8":
        return _ct("int-quantized", {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                   {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True})
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": opts.get("group", 32),
               "symmetric": opts.get("symmetric", True), "actorder": "group" if opts.get("act_order") else None}
    return _ct("pack-quantized", weights, None)


def _ct(fmt: str, weights: dict, acts: dict | None) -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}}}


def _save(directory: Path, config: dict, tensors: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def write_quantized(model, directory: Path, fmt: str, kv_scales: dict[int, tuple[float, float]] | None = None,
                    **opts) -> tuple[Path, Path]:
    """Write `model` (a transformers model) as a `fmt` checkpoint in `directory` and its dequantized
    twin in `directory / "reference"`; returns both paths. `kv_scales` adds per-layer k_scale / v_scale."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    return write_quantized_state(state, config, directory, fmt, kv_scales, **opts)


def write_quantized_state(state: dict, config: dict, directory: Path, fmt: str,
                          kv_scales: dict[int, tuple[float, float]] | None = None, reference: bool = True,
                          **opts) -> tuple[Path, Path | None]:
    """`write_quantized` for a state dict and config.json dict (reference twin only if asked)."""
    assert fmt in FORMATS, fmt
    quantized, ref_state = {}, {}
    for name, w in state.items():
        w = w.float()
        m = LINEAR.match(name)
        if m is None and name == "lm_head.weight" and opts.get("lm_head"):  # GPTQModel's lm_head: true
            m = {"module": "lm_head"}
        if m is None:
            quantized[name] = ref_state[name] = w
            continue
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0  # layers reading the same input share GPTQ's act order
        tensors, ref = quantize_tensors(m["module"], w, fmt, {**opts, "reference": reference},
                                        seed=1000 * layer + w.shape[1])
        quantized.update(tensors)
        ref_state[name] = ref
    for layer, (k, v) in (kv_scales or {}).items():
        quantized[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(k)
        quantized[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(v)
    ref_dir = _save(directory / "reference", dict(config), ref_state) if reference else None
    return _save(directory, {**config, "quantization_config": quant_config(fmt, opts)}, quantized), ref_dir
