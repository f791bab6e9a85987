"""AdapterPool: `max_loras` device slots holding adapters, filled and evicted in LRU order.

Each wrapped layer owns one LoRAWeights (A [slots, num_slices * max_rank, in], B [slots, out,
max_rank], ranks [slots, num_slices]); slot s of every layer holds the same adapter. `acquire`
returns the slot of an adapter, copying it in from host memory when it is not resident: into a
free slot, else over the least recently used adapter outside `keep` (the adapters that a queued or
running forward reads, which must never be overwritten). Copies are issued on the caller's stream,
so forwards launched after them see them.
"""
from __future__ import annotations

import itertools

import torch

from jackfield.lora.adapter import LoRAAdapter
from jackfield.sdk.lora import LoRAWeights


class AdapterPool:
    def __init__(self, layers: dict[str, LoRAWeights], max_loras: int, device: torch.device):
        self.layers = layers
        self.max_loras = max_loras
        self.scalings = torch.zeros(max_loras, dtype=torch.float32, device=device)
        self.owner: list[LoRAAdapter | None] = [None] * max_loras
        self._slot: dict[int, int] = {}  # adapter uid -> its slot (slot_of runs per request per forward)
        self._last_use = [0] * max_loras
        self._clock = itertools.count(1)
        self.loads = 0  # slot fills since start (swaps included)

    def slot_of(self, adapter: LoRAAdapter) -> int | None:
        slot = self._slot.get(adapter.uid)
        return slot if slot is not None and self.owner[slot] is adapter else None

    def resident(self) -> list[LoRAAdapter]:
        return [a for a in self.owner if a is not None]

    def acquire(self, adapter: LoRAAdapter, keep: set[int]) -> int | None:
        """The slot holding `adapter`, loading it if needed; None when every slot holds an adapter
        whose uid is in `keep`."""
        slot = self.slot_of(adapter)
        if slot is None:
            free = [s for s, owner in enumerate(self.owner) if owner is None]
            victims = free or [s for s, owner in enumerate(self.owner) if owner.uid not in keep]
            if not victims:
                return None
            slot = min(victims, key=lambda s: self._last_use[s])
            self._write(slot, adapter)
        self._last_use[slot] = next(self._clock)
        return slot

    def drop(self, adapter: LoRAAdapter) -> None:
        """Forget an unloaded adapter (its slot becomes free; the caller made sure nothing reads it)."""
        slot = self.slot_of(adapter)
        if slot is not None:
            self.owner[slot] = None
            self._last_use[slot] = 0
            del self._slot[adapter.uid]

    @torch.no_grad()
    def _write(self, slot: int, adapter: LoRAAdapter) -> None:
        r = adapter.rank
        for prefix, w in self.layers.items():
            host = adapter.layers.get(prefix)
            if host is None:
                w.ranks[slot].zero_()
                w.a[slot].zero_()
                w.b[slot].zero_()
                continue
            a, b, ranks = host
            n, big = w.num_slices, w.max_rank
            dst_a = w.a[slot].view(n, big, -1)
            dst_a[:, :r].copy_(a.view(n, r, -1), non_blocking=True)
            dst_a[:, r:].zero_()
            w.b[slot, :, :r].copy_(b, non_blocking=True)
            w.b[slot, :, r:].zero_()
            w.ranks[slot].copy_(ranks, non_blocking=True)  # pinned: a pageable copy would wait for the GPU
        self.scalings[slot] = adapter.scaling
        old = self.owner[slot]
        if old is not None:
            del self._slot[old.uid]
        self.owner[slot] = adapter
        self._slot[adapter.uid] = slot
        self.loads += 1
