"""Static decode LoRABatches for CUDA graphs: captured once per batch size, rewritten before each replay.

One int32 device buffer holds, for the batch size being replayed, the token slots followed by the
tiles' values (jackfield.sdk.lora_tiles) when the backend groups decode batches of that size; a
replay rewrites them with one host-to-device copy. Graphs of different sizes view the same buffer:
only one replays at a time, after its own write.
"""
from __future__ import annotations

import torch

from jackfield.sdk.lora import LoRABackend, LoRABatch
from jackfield.sdk.lora_tiles import tile_bound, tile_values, tiles_view


class LoRAGraphSlots:
    def __init__(self, backend: LoRABackend, max_bs: int, max_loras_per_batch: int, scalings: torch.Tensor):
        self.backend, self.per_batch, self.scalings = backend, max_loras_per_batch, scalings
        dev = scalings.device
        longest = max(self._length(bs) for bs in range(1, max_bs + 1))
        self.values = torch.full((longest,), -1, dtype=torch.int32, device=dev)
        self.starts = torch.arange(max_bs, dtype=torch.int32, device=dev)
        self.ones = torch.ones(max_bs, dtype=torch.int32, device=dev)

    def _num_tiles(self, bs: int) -> int:
        tile = self.backend.decode_tile(bs)
        return tile_bound(bs, tile, self.per_batch) if tile > 0 else 0

    def _length(self, bs: int) -> int:
        tiles = self._num_tiles(bs)
        return bs + (bs + 3 * tiles if tiles else 0)

    def batch(self, bs: int) -> LoRABatch:
        """The LoRABatch a graph of batch size bs is captured with (views of the static buffer)."""
        slots = self.values[:bs]
        tile = self.backend.decode_tile(bs)
        tiles = tiles_view(self.values[bs:self._length(bs)], bs, tile) if tile > 0 else None
        return LoRABatch(num_tokens=bs, token_slots=slots, seg_starts=self.starts[:bs], seg_lens=self.ones[:bs],
                         seg_slots=slots, scalings=self.scalings, max_seg_len=1, decode=True, tiles=tiles)

    def write(self, slots: list[int] | tuple[int, ...], bs: int) -> None:
        """Before replaying the graph of batch size bs for len(slots) <= bs tokens (the rest padding)."""
        from jackfield.mem.device_copy import to_device

        padded = list(slots) + [-1] * (bs - len(slots))
        tiles = self._num_tiles(bs)
        values = padded + (tile_values(padded, self.backend.decode_tile(bs), tiles) if tiles else [])
        self.values[:len(values)].copy_(to_device(values, torch.int32, self.values.device), non_blocking=True)
