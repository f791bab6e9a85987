"""The scheduler process's native heap: large temporaries in their own mappings (glibc malloc).

A forward on the CPU allocates temporaries whose sizes follow the batch: prefill activations of
every prompt length, attention scores, logits of every batch size. glibc's malloc gives a block of
at least M_MMAP_THRESHOLD bytes its own mapping, unmapped when the block is freed. That threshold
is dynamic: freeing a mapped block of up to 32 MiB raises it to the block's size, so from then on
such blocks are carved from the heap, where the holes that freed temporaries leave between live
blocks stay resident. Under a mixed load the scheduler's resident memory then grows without bound
in sight although the live Python and torch objects do not (docs/performance.md, "Scheduler memory").

`pin_mmap_threshold` sets the threshold explicitly, which also turns the adjustment off: blocks of
128 KiB or more always get their own mapping and go back to the system when freed. Setting
`MALLOC_MMAP_THRESHOLD_` in the environment (glibc's own knob) keeps that value instead; on a C
library other than glibc nothing is changed.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 << 10  # glibc's initial value


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for this process; True if it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, nbytes))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed; the heap keeps glibc's dynamic threshold", nbytes)
    return ok
