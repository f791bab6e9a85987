"""Host values to a device tensor without waiting for the device.

`torch.tensor(values, device="cuda")` copies from pageable memory and synchronizes the current
stream. The scheduler builds a few such tensors every step while the previous forward still runs;
going through pinned memory with an asynchronous copy lets the host move on at once (the pinned
block stays reserved by PyTorch's caching host allocator until the copy has run).
"""
from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
