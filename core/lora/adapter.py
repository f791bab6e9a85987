"""Reading a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`) into
host memory, checked against the model it will run on.

Tensors are the truth about what an adapter targets: every `<module>.lora_A.weight` /
`<module>.lora_B.weight` pair must name a LoRA-wrapped linear layer of the model (q/k/v/o/gate/up/
down projections; q/k/v and gate/up land in the fused qkv_proj / gate_up_proj as slices) and fit
its shape. Anything the engine would otherwise have to ignore (DoRA, per-module rank or alpha
patterns, trained biases, embedding adapters, modules_to_save) is refused with the value named.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<which>lora_A|lora_B)(?:\.default)?\.weight$")


class AdapterError(ValueError):
    """An adapter cannot be loaded; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass(frozen=True)
class LayerSpec:
    """A LoRA-wrapped linear layer: its input size and, per slice, the checkpoint module name and
    output columns (offset, size)."""

    in_features: int
    slices: tuple[tuple[str, int, int], ...]  # (checkpoint module name, offset, size)


@dataclass(frozen=True, eq=False)
class LoRAAdapter:
    """An adapter in host memory: per wrapped layer, A [num_slices * rank, in] (slices of modules
    it does not target are zero), B [out, rank] and the rank of each slice (int32 [num_slices], 0: not
    adapted). On CUDA all three are pinned, so copying them into a slot never waits for the GPU."""

    name: str
    path: str
    uid: int
    rank: int
    alpha: float
    scaling: float
    targets: tuple[str, ...]
    base_model: str | None
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(repr=False)

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "rank": self.rank, "lora_alpha": self.alpha,
                "scaling": self.scaling, "target_modules": list(self.targets), "base_model": self.base_model}


def read_config(path: Path, name: str) -> dict:
    if not path.is_dir():
        raise AdapterError(f"LoRA adapter '{name}': no adapter directory at '{path}'", 404, "lora_path")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise AdapterError(f"LoRA adapter '{name}': '{path}' has no {CONFIG_FILE}", param="lora_path")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter '{name}': cannot read {cfg_file}: {exc}", param="lora_path") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"LoRA adapter '{name}': {cfg_file} does not hold a JSON object", param="lora_path")
    return cfg


def _refuse_unsupported(cfg: dict, name: str) -> None:
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(f"LoRA adapter '{name}': peft_type '{peft_type}' is not supported (only LORA)")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise AdapterError(f"LoRA adapter '{name}': {key} {cfg[key]!r} is not supported (one rank and alpha "
                               "per adapter)")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise AdapterError(f"LoRA adapter '{name}': {key}=true is not supported")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"LoRA adapter '{name}': bias '{cfg['bias']}' is not supported (only 'none')")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"LoRA adapter '{name}': modules_to_save {cfg['modules_to_save']!r} is not supported")


def _int_field(cfg: dict, key: str, name: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AdapterError(f"LoRA adapter '{name}': {key} must be a positive integer, got {value!r}")
    return value


def read_adapter(name: str, path: str | Path, uid: int, layers: dict[str, LayerSpec], module_map: dict[str, str],
                 max_rank: int, dtype: torch.dtype, pin: bool = False) -> LoRAAdapter:
    """Read and check the adapter at `path`. `layers`: the model's wrapped layers by prefix;
    `module_map`: checkpoint module name (q_proj) -> the wrapped layer's last name (qkv_proj)."""
    path = Path(path)
    cfg = read_config(path, name)
    _refuse_unsupported(cfg, name)
    rank = _int_field(cfg, "r", name)
    base = cfg.get("base_model_name_or_path")
    if rank > max_rank:
        raise AdapterError(f"LoRA adapter '{name}': rank r={rank} exceeds max_lora_rank {max_rank}", param="lora_path")
    alpha = cfg.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterError(f"LoRA adapter '{name}': lora_alpha must be a number, got {alpha!r}")
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    declared = cfg.get("target_modules")
    if isinstance(declared, (list, tuple)):
        for module in declared:
            if module.rsplit(".", 1)[-1] not in module_map:
                raise AdapterError(f"LoRA adapter '{name}': target module '{module}' is not a LoRA-enabled linear "
                                   f"layer of this model (enabled: {', '.join(module_map)})")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"LoRA adapter '{name}': '{path}' has no {WEIGHTS_FILE} (only safetensors is read)",
                           param="lora_path")
    try:
        tensors = _read_tensors(weights)
    except Exception as exc:  # a truncated or foreign file: safetensors raises its own error types
        raise AdapterError(f"LoRA adapter '{name}': cannot read {weights}: {type(exc).__name__}: {exc}",
                           param="lora_path") from None
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"LoRA adapter '{name}': tensor '{key}' is not a lora_A / lora_B weight "
                               "(embedding adapters, DoRA magnitudes and saved modules are not supported)")
        prefix, _, module = m["module"].rpartition(".")
        if module not in module_map:
            raise AdapterError(f"LoRA adapter '{name}': target module '{module}' ('{key}') is not a LoRA-enabled "
                               f"linear layer of this model (enabled: {', '.join(module_map)})")
        layer = f"{prefix}.{module_map[module]}"
        if layer not in layers:
            raise AdapterError(f"LoRA adapter '{name}': the model has no layer '{prefix}.{module}' (is the adapter "
                               f"for another base model? its base_model_name_or_path is {base!r})")
        pairs.setdefault((layer, module), {})[m["which"]] = tensor
    if not pairs:
        raise AdapterError(f"LoRA adapter '{name}': {WEIGHTS_FILE} holds no LoRA weights")
    host = _stack(name, rank, base, pairs, layers, dtype)
    if pin:
        host = {k: tuple(t.pin_memory() for t in v) for k, v in host.items()}
    targets = tuple(sorted({module for _, module in pairs}))
    return LoRAAdapter(name, str(path), uid, rank, float(alpha), float(scaling), targets, base, host)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _stack(name: str, rank: int, base, pairs: dict, layers: dict[str, LayerSpec],
           dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per wrapped layer: A [num_slices * rank, in] and B [out, rank], untargeted slices zero."""
    out = {}
    for layer in sorted({layer for layer, _ in pairs}):
        spec = layers[layer]
        n = len(spec.slices)
        out_features = sum(size for _, _, size in spec.slices)
        a = torch.zeros(n * rank, spec.in_features, dtype=dtype)
        b = torch.zeros(out_features, rank, dtype=dtype)
        ranks = [0] * n
        for j, (module, offset, size) in enumerate(spec.slices):
            pair = pairs.get((layer, module))
            if pair is None:
                continue
            where = f"{layer.rpartition('.')[0]}.{module}"
            if set(pair) != {"lora_A", "lora_B"}:
                raise AdapterError(f"LoRA adapter '{name}': '{where}' has {' and '.join(sorted(pair))} but not both "
                                   "lora_A and lora_B")
            la, lb = pair["lora_A"], pair["lora_B"]
            if tuple(la.shape) != (rank, spec.in_features) or tuple(lb.shape) != (size, rank):
                raise AdapterError(
                    f"LoRA adapter '{name}': '{where}' has lora_A {tuple(la.shape)} and lora_B {tuple(lb.shape)}, but "
                    f"rank {rank} on this model's layer needs ({rank}, {spec.in_features}) and ({size}, {rank}) (is the "
                    f"adapter for another base model? its base_model_name_or_path is {base!r})")
            a[j * rank:(j + 1) * rank] = la.to(dtype)
            b[offset:offset + size] = lb.to(dtype)
            ranks[j] = rank
        out[layer] = (a, b, torch.tensor(ranks, dtype=torch.int32))
    return out
