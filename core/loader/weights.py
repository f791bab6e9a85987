"""Checkpoint readers: safetensors (single or sharded) and random dummy weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / s for s in shards]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    missing = [f for f in files if not f.exists()]
    if not files or missing:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}"
                                + (f" (missing shards: {', '.join(m.name for m in missing)})" if missing else ""))
    return files


def iter_safetensors(model_dir: Path, progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = safetensors_files(model_dir)
    handles = []
    for f in files:
        try:
            handles.append(safe_open(str(f), framework="pt"))
        except Exception as exc:
            raise ValueError(f"cannot read weights file {f}: {exc}") from exc
    total = sum(len(list(h.keys())) for h in handles)
    bar = tqdm(total=total, desc="Loading weights", unit="tensor", disable=not progress, leave=False)
    for h in handles:
        for name in h.keys():
            yield name, h.get_tensor(name)
            bar.update(1)
    bar.close()


def init_dummy_weights(model: torch.nn.Module, seed: int) -> None:
    """Random weights for benchmarks: small uniform values keep activations finite in bf16.

    A linear layer (a module with a `LinearMethod` as `method`) gets a random float weight through
    `method.load_float`, so a quantization method writes it in its checkpoint layout (packed
    integers and scales) exactly as a real checkpoint would hold it."""
    from jackfield.sdk.quant import LinearMethod

    gens: dict[torch.device, torch.Generator] = {}

    def gen(device: torch.device) -> torch.Generator:
        return gens.setdefault(device, torch.Generator(device=device).manual_seed(seed))

    linears = {name: m for name, m in model.named_modules() if isinstance(getattr(m, "method", None), LinearMethod)}
    with torch.no_grad():
        modules = dict(model.named_modules())
        for name, p in model.named_parameters():
            owner, _, pname = name.rpartition(".")
            if owner in linears and pname != "bias":
                continue  # the linear's method fills its own tensors below
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
                continue
            whole = getattr(modules.get(owner), "dummy_shapes", {}).get(pname)
            if whole is not None:  # a tensor-/expert-parallel part: this rank's part of one whole draw
                full = torch.empty(whole, dtype=p.dtype, device=p.device).uniform_(-0.02, 0.02, generator=gen(p.device))
                p.copy_(modules[owner].dummy_part(pname, full))
                continue
            p.uniform_(-0.02, 0.02, generator=gen(p.device))
        for module in linears.values():
            device = next(t.device for t in list(module.parameters()) + list(module.buffers()))
            # the whole layer's weight, drawn alike on every rank; a tensor-parallel layer keeps its part
            shape = getattr(module, "dummy_shapes", {}).get("weight") or (getattr(module, "full_out_features", module.out_features),
                                                                  getattr(module, "full_in_features", module.in_features))
            w = torch.empty(shape, device=device)
            w = w.uniform_(-0.02, 0.02, generator=gen(device))
            module.method.load_float(module, module.dummy_part("weight", w) if hasattr(module, "dummy_part") else w)
    for module in model.modules():
        finish = getattr(module, "process_weights_after_loading", None)
        if finish is not None:
            finish()
