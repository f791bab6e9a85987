"""What the quantization plugins share: the CUDA requirement, ignore lists, shard bookkeeping."""
from __future__ import annotations

import importlib.util
import re

import torch
from torch import nn

from jackfield.sdk import SelectionContext, checkpoint_names


def triton_missing_on_cuda(ctx: SelectionContext) -> list[str]:
    """The incompatibility of a method whose CUDA kernels are Triton's, on a machine without it."""
    if ctx.device == "cuda" and importlib.util.find_spec("triton") is None:
        return ["its CUDA kernels need the Python package 'triton' (pip install 'jackfield[gpu]')"]
    return []


def is_ignored(prefix: str, ignored: tuple[str, ...]) -> bool:
    """Whether a checkpoint's ignore list (module names, or `re:` patterns as compressed-tensors
    writes them) leaves this layer unquantized: a fused layer when all of its shards are listed."""
    def listed(name: str) -> bool:
        for entry in ignored:
            if entry.startswith("re:"):
                if re.fullmatch(entry[3:], name):
                    return True
            elif name == entry or name.endswith("." + entry) or entry.endswith("." + name):
                return True
        return False

    return all(listed(n) for n in checkpoint_names(prefix))


def shards(layer: nn.Module, out_features: int) -> list[tuple[int, int]]:
    """(offset, size) of each checkpoint tensor fused into the layer's rows (one for a plain layer)."""
    return list(getattr(layer, "shards", {None: (0, out_features)}).values())


def replace_parameter(layer: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Swap a parameter of `layer` for `value` (a frozen Parameter), or remove it (None)."""
    if hasattr(layer, name):
        delattr(layer, name)
    if value is not None:
        setattr(layer, name, nn.Parameter(value, requires_grad=False))


def load_row_scale(layer: nn.Module, name: str, tensor: torch.Tensor, offset: int, size: int) -> None:
    """Load a per-tensor (one value) or per-channel ([size] or [size, 1]) scale of one shard into
    rows [offset, offset + size) of the layer's per-row scale parameter `name`."""
    flat = tensor.float().reshape(-1)
    if flat.numel() not in (1, size):
        raise ValueError(f"{name} of shape {tuple(tensor.shape)} is neither per tensor nor per channel for "
                         f"{size} rows")
    with torch.no_grad():
        getattr(layer, name)[offset:offset + size] = flat
