"""Decode batches grouped by adapter, so that a decode kernel reads each adapter once per tile.

A per-token (BGMV) decode kernel reads the adapter of every token on its own: at batch 256 over 8
adapters each adapter's A and B are read 32 times per layer. A backend whose
`LoRABackend.decode_tile(num_tokens)` returns T > 0 gets decode batches with `LoRABatch.tiles`:
the adapted tokens' indices sorted by slot (`order`, base-model tokens after them), cut into tiles
of at most T tokens of one slot (`starts` indexes `order`). A segment-GEMM kernel then runs one
program per tile and reads its adapter once.

A batch of n tokens with at most G adapters has at most cdiv(n, T) + min(G, n) tiles
(`tile_bound`). In a CUDA graph the tiles are padded to that bound with length 0 and slot -1, so
the graph captured for batch size n replays any decode batch of that size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRATiles:
    size: int              # T: the most tokens in a tile
    order: torch.Tensor    # [num_tokens] int32: token indices, the adapted ones grouped by slot first
    starts: torch.Tensor   # [num_tiles] int32: a tile's first position in `order`
    lens: torch.Tensor     # [num_tiles] int32: 1..T (0: padding)
    slots: torch.Tensor    # [num_tiles] int32: the tile's slot (-1: padding)

    @property
    def num_tiles(self) -> int:
        return int(self.slots.shape[0])


def tile_bound(num_tokens: int, size: int, max_loras_per_batch: int) -> int:
    """The most tiles a decode batch of num_tokens tokens over at most max_loras_per_batch adapters has."""
    return -(-num_tokens // size) + min(max_loras_per_batch, num_tokens)


def tile_values(slots, size: int, num_tiles: int | None = None) -> list[int]:
    """order, starts, lens and slots of the tiles of a decode batch whose token i uses slots[i], as one
    list of ints (len(slots) + 3 * num_tiles of them; num_tiles None: exactly as many as there are)."""
    by_slot: dict[int, list[int]] = {}
    base: list[int] = []
    for i, slot in enumerate(slots):
        (by_slot.setdefault(slot, []) if slot >= 0 else base).append(i)
    order: list[int] = []
    starts: list[int] = []
    lens: list[int] = []
    tile_slots: list[int] = []
    for slot in sorted(by_slot):
        tokens = by_slot[slot]
        pos, end = len(order), len(order) + len(tokens)
        starts += range(pos, end, size)
        lens += [size] * ((len(tokens) - 1) // size) + [(len(tokens) - 1) % size + 1]
        tile_slots += [slot] * (-(-len(tokens) // size))
        order += tokens
    pad = 0 if num_tiles is None else num_tiles - len(starts)
    if pad < 0:
        raise ValueError(f"a decode batch of {len(slots)} tokens over {len(by_slot)} adapters makes "
                         f"{len(starts)} tiles of {size}, more than the {num_tiles} provided for")
    return order + base + starts + [0] * pad + lens + [0] * pad + tile_slots + [-1] * pad


def tiles_view(values: torch.Tensor, num_tokens: int, size: int) -> LoRATiles:
    """LoRATiles over views of a device tensor laid out as `tile_values` returns them."""
    num_tiles = (values.shape[0] - num_tokens) // 3
    order, rest = values[:num_tokens], values[num_tokens:]
    return LoRATiles(size=size, order=order, starts=rest[:num_tiles], lens=rest[num_tiles:2 * num_tiles],
                     slots=rest[2 * num_tiles:3 * num_tiles])
