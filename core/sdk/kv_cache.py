"""The paged KV pool: one preallocated K and V tensor per layer, indexed by token slot.

Slot layout: `[(num_pages + 1) * page_size, num_kv_heads, head_dim]` per layer. Page 0 (slots
0..page_size-1) is never handed out: padded rows of CUDA-graph batches write there harmlessly.
Which slots are free is the allocator's business (jackfield.mem.allocator), not the pool's.
"""
from __future__ import annotations

import torch

from jackfield.kernels import fused_available


class KVPool:
    def __init__(self, num_pages: int, page_size: int, num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        self.num_pages, self.page_size = num_pages, page_size
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        rows = (num_pages + 1) * page_size
        self.k_buffers = [torch.zeros(rows, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(rows, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self._store_kv = None
        if num_layers and fused_available(self.k_buffers[0]):
            from jackfield.kernels.kv_store import store_kv

            self._store_kv = store_kv

    @property
    def num_slots(self) -> int:
        """Usable token slots (the reserved page excluded)."""
        return self.num_pages * self.page_size

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def k_buffer(self, layer_id: int) -> torch.Tensor:
        return self.k_buffers[layer_id]

    def v_buffer(self, layer_id: int) -> torch.Tensor:
        return self.v_buffers[layer_id]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K/V of shape [n, num_kv_heads, head_dim] (or [n, kv_heads*head_dim]) to slots `loc`.
        On CUDA one Triton kernel writes both (jackfield.kernels.kv_store)."""
        if self._store_kv is not None and k.dim() == 2 and k.stride(1) == 1 and v.stride(1) == 1:
            self._store_kv(self.k_buffers[layer_id], self.v_buffers[layer_id], loc, k, v)
            return
        shape = (-1, self.num_kv_heads, self.head_dim)
        self.k_buffers[layer_id][loc] = k.view(shape).to(self.dtype)
        self.v_buffers[layer_id][loc] = v.view(shape).to(self.dtype)
