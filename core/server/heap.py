"""The scheduler process's native heap: free pages go back to the system (glibc malloc).

A forward on the CPU allocates temporaries whose sizes follow the batch: prefill activations of
every prompt length, gathered KV, logits of every batch size. glibc gives a block of at least
M_MMAP_THRESHOLD bytes its own mapping, unmapped when freed, but that threshold is dynamic: freeing
a mapped block of up to 32 MiB raises it to the block's size, so from then on such blocks are carved
from the heap. The holes that freed temporaries leave between live blocks stay resident, and under
a mixed load the scheduler's resident memory grows while its live Python and torch objects do not
(docs/performance.md, "Scheduler memory").

`HeapTrimmer` calls `malloc_trim(0)`, which returns every whole free page of the heap to the system,
after the scheduler worked: once every `interval_s` seconds at most. Pinning the mmap threshold
instead also stops the growth, but then every large temporary is a fresh mapping whose pages fault
in again on each forward (a third longer on the embedded model; trimming, about 2% more CPU time).
On a C library other than glibc the trimmer does nothing.

A trim walks the whole heap and takes tens of milliseconds on a large one (up to 41 ms measured in a
GPU server's scheduler): while requests run, that is a pause in which no forward is launched. With
`idle_only` (a CUDA scheduler, whose forwards allocate on the device) the trimmer waits for the
scheduler to be idle; on the CPU, where the growth comes from the forwards themselves, it trims
during work too.
"""
from __future__ import annotations

import ctypes
import time
from typing import Callable

TRIM_INTERVAL_S = 5.0


def libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    def __init__(self, interval_s: float = TRIM_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 trim: Callable[[int], int] | None = None, idle_only: bool = False):
        self.interval_s, self.clock, self.idle_only = interval_s, clock, idle_only
        self._trim = trim if trim is not None else libc_malloc_trim()
        self._last = clock()
        self._worked = False
        self.trims = 0

    def worked(self) -> None:
        """The scheduler ran a step (it allocated and freed temporaries)."""
        self._worked = True

    def maybe_trim(self, idle: bool = True) -> bool:
        """Trim if the scheduler worked since the last trim and `interval_s` has passed (and, with
        `idle_only`, it is `idle` now); True if it did."""
        if self._trim is None or not self._worked or self.clock() - self._last < self.interval_s:
            return False
        if self.idle_only and not idle:
            return False
        self._trim(0)
        self._last, self._worked = self.clock(), False
        self.trims += 1
        return True
