"""Host values to a device tensor without waiting for the device.

`torch.tensor(values, device="cuda")` copies from pageable memory and synchronizes the current
stream. The scheduler builds a few such tensors every step while the previous forward still runs;
going through pinned memory with an asynchronous copy lets the host move on at once (the pinned
block stays reserved by PyTorch's caching host allocator until the copy has run).
"""
from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`values` (a list, nested lists or a CPU tensor) as a `dtype` tensor on `device`."""
    device = torch.device(device)
    if isinstance(values, torch.Tensor) and values.device.type != "cpu":
        return values.to(device=device, dtype=dtype)
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
