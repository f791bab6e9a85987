"""TokenAllocator: which KV-pool slots are free, managed in pages.

Slot s lives in page s // page_size. Page 0 (slots 0..page_size-1) is reserved for dummy writes and
is never handed out; usable pages are 1..num_pages. Accounting is exact: `available_size()` is the
number of free pages times page_size. A page belongs to exactly one owner (a request or a radix
node), and token j of a request sits at offset j % page_size of its page, so what an owner frees is
a run of whole pages (the last possibly part-used); with checks on, freeing a page that is already
free raises RuntimeError. With checks off (CUDA) such frees are counted on the device instead, and
`audit()`, which the scheduler calls when it goes idle, reports and repairs them. Allocation takes
pages from the free list in ascending order; freed pages wait in a release list and are merged back,
sorted, only when the free list runs short (as SGLang's allocator does), so a step that frees pages
does not pay a sort of the whole pool on its next allocation. Allocations either succeed completely
or return None and allocate nothing.
"""
from __future__ import annotations

import itertools

import torch

from jackfield.mem.device_copy import to_device


class TokenAllocator:
    def __init__(self, num_pages: int, page_size: int, device: torch.device | str, checks: bool | None = None):
        """`checks`: verify every `free` (page range, whole-page runs, double frees), which reads the
        device; by default on everywhere but CUDA, where a check would stall the overlap scheduler."""
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"TokenAllocator needs num_pages >= 1 and page_size >= 1, got {num_pages}, {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.device = torch.device(device)
        self.checks = self.device.type != "cuda" if checks is None else checks
        self.clear()

    @property
    def capacity(self) -> int:
        """Usable token slots (the reserved page excluded)."""
        return self.num_pages * self.page_size

    def clear(self) -> None:
        """Mark every usable page free."""
        self._free_pages = torch.arange(1, self.num_pages + 1, dtype=torch.int64, device=self.device)
        self._released: list[torch.Tensor] = []
        self._num_released = 0
        self._page_free = torch.ones(self.num_pages + 1, dtype=torch.bool, device=self.device)
        self._page_free[0] = False
        self._double_frees = torch.zeros((), dtype=torch.int64, device=self.device)

    def num_free_pages(self) -> int:
        return self._free_pages.numel() + self._num_released

    def available_size(self) -> int:
        """Free token slots: free pages x page_size."""
        return self.num_free_pages() * self.page_size

    def _merge_released(self) -> None:
        if self._released:
            merged = torch.cat([self._free_pages, *self._released])
            self._free_pages = torch.sort(merged).values
            self._released, self._num_released = [], 0

    def _take_pages(self, n: int) -> torch.Tensor | None:
        if n > self.num_free_pages():
            return None
        if n > self._free_pages.numel():
            self._merge_released()
        pages = self._free_pages[:n]
        self._free_pages = self._free_pages[n:]
        self._page_free.index_fill_(0, pages, False)  # (an indexed assignment of False would sync)
        return pages

    def _pages_to_slots(self, pages: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.page_size, dtype=torch.int64, device=self.device)
        return (pages[:, None] * self.page_size + offsets).reshape(-1)

    def alloc(self, n: int) -> torch.Tensor | None:
        """Allocate n slots (whole pages; n must be a multiple of page_size). int64 or None."""
        if n < 0 or n % self.page_size:
            raise ValueError(f"alloc({n}): n must be a non-negative multiple of page_size {self.page_size}")
        pages = self._take_pages(n // self.page_size)
        return None if pages is None else self._pages_to_slots(pages)

    def alloc_extend(self, prefix_lens, extend_lens, last_locs) -> torch.Tensor | None:
        """Allocate slots for extend_lens[i] new tokens after prefix_lens[i] cached tokens, per request.

        `last_locs[i]` is the slot of token prefix_lens[i]-1 (-1 when the prefix is empty). New tokens
        first fill the free tail of that token's page, then take fresh pages. Returns the slots of
        all requests concatenated in order (int64), or None, allocating nothing, if pages run short.

        The lengths are host ints, so the pages needed are counted on the host. `last_locs` may be a
        device tensor (the scheduler passes slots it reads on the device): then nothing here waits
        for the device. Given as host values they are checked against the prefix lengths first.
        """
        ps = self.page_size
        p, e = [int(n) for n in prefix_lens], [int(n) for n in extend_lens]
        if not len(p) == len(e) == len(last_locs):
            raise ValueError("alloc_extend: prefix_lens, extend_lens and last_locs differ in length")
        if any(n < 0 for n in p + e):
            raise ValueError("alloc_extend: negative prefix or extend length")
        total = sum(e)
        if ps == 1:
            return self.alloc(total)
        prefix_pages = [-(-n // ps) for n in p]
        need = [-(-(a + b) // ps) - pp for a, b, pp in zip(p, e, prefix_pages)]
        if not isinstance(last_locs, torch.Tensor):
            self._check_partial_pages(p, e, [int(x) for x in last_locs])
        pages = self._take_pages(sum(need))
        if pages is None:
            return None
        if total == 0:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        last = to_device(last_locs, torch.int64, self.device).reshape(-1)
        first_page = list(itertools.accumulate(need, initial=0))[:-1]  # of each request among `pages`
        starts = list(itertools.accumulate(e, initial=0))[:-1]
        per_req = to_device([*p, *e, *prefix_pages, *first_page, *starts], torch.int64, self.device).view(5, -1)
        p_d, e_d, pp_d, first_d, start_d = per_req
        req = torch.repeat_interleave(torch.arange(len(p), device=self.device), e_d, output_size=total)
        pos = p_d[req] + torch.arange(total, device=self.device) - start_d[req]  # token position in its request
        partial_slot = last[req] + (pos - p_d[req] + 1)
        if not pages.numel():
            return partial_slot
        page_idx = first_d[req] + pos // ps - pp_d[req]
        new_slot = pages[page_idx.clamp(0, pages.numel() - 1)] * ps + pos % ps
        return torch.where(pos < pp_d[req] * ps, partial_slot, new_slot)

    def _check_partial_pages(self, prefix: list[int], extend: list[int], last: list[int]) -> None:
        """Host-given last slots: each must sit at its prefix's offset in a page that is allocated."""
        ps = self.page_size
        partial = [(a, slot) for a, b, slot in zip(prefix, extend, last) if a % ps and b > 0]
        if any(slot < 0 or slot % ps != (a - 1) % ps for a, slot in partial):
            raise ValueError("alloc_extend: last_locs inconsistent with prefix_lens")
        if partial and bool(self._page_free[torch.tensor([slot // ps for _, slot in partial])].any()):
            raise RuntimeError("alloc_extend: a request's partial last page is not allocated")

    def decode_page_starts(self, kv_lens: list[int]) -> list[bool]:
        """For requests holding `kv_lens` tokens: whether each one's next token starts a new page."""
        return [n % self.page_size == 0 for n in kv_lens]

    def alloc_decode(self, seq_lens: list[int], last_locs) -> torch.Tensor | None:
        """One slot per request; `seq_lens` (host ints) include the new token, `last_locs[i]` (a
        device tensor or a list) is the slot of the token before it (any value for a request with
        no KV yet). int64 slots or None. The host knows which requests start a new page, so unlike
        `alloc_extend` this never waits for the device (it is called every decode step)."""
        if self.page_size == 1:
            return self.alloc(len(seq_lens))
        starts = self.decode_page_starts([int(n) - 1 for n in seq_lens])
        pages = self._take_pages(sum(starts))
        if pages is None:
            return None
        last = to_device(last_locs, torch.int64, self.device).reshape(-1)
        if not any(starts):
            return last + 1
        # index of each starting request's page among the new ones, -1 for the others (one copy)
        idx = to_device([c - 1 if s else -1 for c, s in zip(itertools.accumulate(starts), starts)],
                        torch.int64, self.device)
        return torch.where(idx >= 0, pages[idx.clamp(min=0)] * self.page_size, last + 1)

    def free(self, slots: torch.Tensor) -> None:
        """Free the pages of `slots`, a run of a request's slots as its table row holds them: the run
        starts at a page start (the last page may be partly used), so the pages are every
        page_size-th slot and nothing here waits for the device. A page must not already be free."""
        if slots.numel() == 0:
            return
        slots = slots.to(self.device, torch.int64).reshape(-1)
        pages = slots[:: self.page_size] // self.page_size
        if self.checks:
            self._check_free(slots, pages)
        else:  # counted on the device, no wait; audit() reads the count
            self._double_frees += self._page_free[pages].sum()
        self._page_free.index_fill_(0, pages, True)
        self._released.append(pages)
        self._num_released += pages.numel()

    def _check_free(self, slots: torch.Tensor, pages: torch.Tensor) -> None:
        if bool((pages < 1).any()) or bool((pages > self.num_pages).any()):
            raise ValueError(f"free: slots outside the usable pages 1..{self.num_pages}")
        offsets = torch.arange(slots.numel(), device=self.device) % self.page_size
        if not torch.equal(slots, pages.repeat_interleave(self.page_size)[: slots.numel()] * self.page_size + offsets):
            raise ValueError("free: slots are not a run of whole pages starting at a page start")
        if torch.unique(pages).numel() != pages.numel() or bool(self._page_free[pages].any()):
            dup = pages[self._page_free[pages]].tolist() or pages.tolist()
            raise RuntimeError(f"double free of KV pages {dup[:8]}")

    def audit(self) -> int:
        """The number of pages freed while already free since the last audit (counted when checks are
        off). Reads the device, so call it when idle. Such pages sit twice in the free list, which is
        deduplicated here so that no page goes to two owners."""
        n = int(self._double_frees)
        if n:
            self._double_frees.zero_()
            self._merge_released()
            self._free_pages = torch.unique(self._free_pages)
        return n

    def debug_check(self) -> None:
        """Raise RuntimeError if the free list and the free-page mask disagree."""
        self._merge_released()
        fp = self._free_pages
        if torch.unique(fp).numel() != fp.numel():
            raise RuntimeError("allocator free list holds a page twice")
        if fp.numel() and (int(fp.min()) < 1 or int(fp.max()) > self.num_pages):
            raise RuntimeError("allocator free list holds an out-of-range page")
        mask = torch.zeros_like(self._page_free)
        mask[fp] = True
        if not torch.equal(mask, self._page_free):
            raise RuntimeError("allocator free list and free-page mask disagree")
