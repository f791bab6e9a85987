"""ReqToTokenPool: one row per running request mapping token position -> KV slot.

`req_to_token[r, j]` is the KV slot of token j of the request holding row r. Row 0 is a padding row
(CUDA-graph dummy requests point at it) and is never handed out; usable rows are 1..size.
"""
from __future__ import annotations

from collections import deque

import torch


class ReqToTokenPool:
    def __init__(self, size: int, max_context_len: int, device: torch.device | str):
        if size < 1 or max_context_len < 1:
            raise ValueError(f"ReqToTokenPool needs size >= 1 and max_context_len >= 1, got {size}, {max_context_len}")
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros(size + 1, max_context_len, dtype=torch.int32, device=self.device)
        self.clear()

    def clear(self) -> None:
        """Mark every row free again (lowest rows are handed out first)."""
        self._free: deque[int] = deque(range(1, self.size + 1))
        self._in_use = [False] * (self.size + 1)

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        """Take a free row in 1..size, or return None when all rows are in use."""
        if not self._free:
            return None
        idx = self._free.popleft()
        self._in_use[idx] = True
        return idx

    def free(self, idx: int) -> None:
        """Return row `idx`. Raises RuntimeError if it is not currently allocated."""
        if not 1 <= idx <= self.size:
            raise ValueError(f"req_to_token row {idx} is outside 1..{self.size}")
        if not self._in_use[idx]:
            raise RuntimeError(f"double free of req_to_token row {idx}")
        self._in_use[idx] = False
        self._free.append(idx)
