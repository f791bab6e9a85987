"""Host values to a device tensor without waiting for the device.

`torch.tensor(values, device="cuda")` copies from pageable memory and synchronizes the current
stream. The scheduler builds a few such tensors every step while the previous forward still runs;
going through pinned memory with an asynchronous copy lets the host move on at once (the pinned
block stays reserved by PyTorch's caching host allocator until the copy has run).

Python lists become tensors through numpy (`host_tensor`): `torch.tensor` of a list of a thousand
ints costs about 5x as much host time as `np.array`, and the scheduler converts several per step.
"""
from __future__ import annotations

import numpy as np
import torch

_NUMPY = {torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_, torch.float32: np.float32,
          torch.float64: np.float64}


def host_tensor(values, dtype: torch.dtype) -> torch.Tensor:
    """`values` (a list, nested lists of equal lengths, or a tensor) as a CPU-or-same-device `dtype` tensor."""
    if isinstance(values, torch.Tensor):
        return values.to(dtype)
    np_dtype = _NUMPY.get(dtype)
    if np_dtype is None:
        return torch.tensor(values, dtype=dtype)
    return torch.from_numpy(np.array(values, dtype=np_dtype))


def to_device(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`values` (a list, nested lists or a CPU tensor) as a `dtype` tensor on `device`."""
    device = torch.device(device)
    if isinstance(values, torch.Tensor) and values.device.type != "cpu":
        return values.to(device=device, dtype=dtype)
    host = host_tensor(values, dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
