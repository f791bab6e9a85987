"""Decode batches grouped by slot (jackfield.sdk.lora_tiles): every adapted token in exactly one tile
of its own slot, at most T tokens a tile, never more tiles than `tile_bound`, padding inert."""
from __future__ import annotations

import random

import pytest
import torch

from jackfield.sdk import LoRAGraphSlots, LoRABackend, tile_bound, tile_values
from jackfield.sdk.lora_tiles import tiles_view


def _check(slots, size, per_batch):
    bound = tile_bound(len(slots), size, per_batch)
    values = torch.tensor(tile_values(slots, size, bound), dtype=torch.int32)
    tiles = tiles_view(values, len(slots), size)
    order = tiles.order.tolist()
    assert sorted(order) == list(range(len(slots)))
    seen = []
    for start, n, slot in zip(tiles.starts.tolist(), tiles.lens.tolist(), tiles.slots.tolist()):
        if slot < 0:
            assert n == 0
            continue
        assert 1 <= n <= size
        rows = order[start:start + n]
        assert all(slots[r] == slot for r in rows)
        seen += rows
    assert sorted(seen) == sorted(i for i, s in enumerate(slots) if s >= 0)


@pytest.mark.parametrize("seed", range(20))
def test_tiles_cover_every_adapted_token_once(seed):
    rng = random.Random(seed)
    per_batch = rng.choice([1, 3, 8, 64])
    adapters = rng.sample(range(100), per_batch)
    n = rng.choice([1, 5, 16, 17, 40, 256])
    slots = [rng.choice(adapters + [-1]) for _ in range(n)]
    _check(slots, rng.choice([4, 16]), per_batch)


def test_worst_case_fills_the_bound_and_one_more_adapter_is_refused():
    slots = [0] * 17 + [1, 2, 3]   # 17 tokens of slot 0: two tiles of 16; then three one-token tiles
    assert len(tile_values(slots, 16)) == 20 + 3 * 5
    assert tile_bound(20, 16, 4) == 2 + 4
    with pytest.raises(ValueError, match="more than the 4"):
        tile_values(slots, 16, 4)


class _Grouping(LoRABackend):
    name = "grouping"

    def decode_tile(self, num_tokens):
        return 4 if num_tokens >= 3 else 0

    def apply(self, weights, x, base_out):
        return base_out


def test_graph_slots_rewrite_slots_and_tiles_in_place():
    scalings = torch.ones(4)
    graph = LoRAGraphSlots(_Grouping(None), 8, 4, scalings)
    small, big = graph.batch(2), graph.batch(8)
    assert small.tiles is None and big.tiles.num_tiles == tile_bound(8, 4, 4)
    graph.write([1, 0, 1, -1, 1, 1, 1], 8)
    assert big.token_slots.tolist() == [1, 0, 1, -1, 1, 1, 1, -1]
    assert big.tiles.slots.tolist()[:3] == [0, 1, 1] and set(big.tiles.slots.tolist()[3:]) == {-1}
    assert big.tiles.lens.tolist()[:3] == [1, 4, 1]
    graph.write([3], 2)
    assert small.token_slots.tolist() == [3, -1]
