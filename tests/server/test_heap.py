"""The scheduler process's heap (jackfield.server.heap): the free pages that forward temporaries leave
go back to the system, at most every few seconds and only after work."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from jackfield.server.heap import HeapTrimmer

LIBC, LIBC_VERSION = platform.libc_ver()
GLIBC = (platform.system() == "Linux" and LIBC == "glibc"
         and tuple(map(int, LIBC_VERSION.split("."))) >= (2, 33))

# A fresh interpreter (malloc's state is per process): glibc's mmap threshold at 32 MiB, where its
# dynamic adjustment takes it once large temporaries were freed, then 8 temporaries of 4 to 11 MiB,
# each followed by a block that stays alive, as a forward's activations and a request's state
# interleave. Each live block is larger than every hole below it, so glibc places it above its
# temporary whatever the imports left free: the temporaries' holes (60 MiB) stay resident until a trim.
PATTERN = """
import ctypes, json
import torch
from jackfield.server.heap import HeapTrimmer


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: where glibc's dynamic threshold ends up
before = rss()
keep = []
for i in range(8):
    size = (4 + i) << 20
    temporary = torch.ones(size, dtype=torch.uint8)
    keep.append(torch.ones(size + (64 << 10), dtype=torch.uint8))
    del temporary
grown, free = rss() - before, libc.mallinfo2().fordblks
heap = HeapTrimmer(interval_s=0.0)
heap.worked()
trimmed = heap.maybe_trim()
print(json.dumps({"grown": grown, "free": free, "trimmed": trimmed, "after_trim": rss() - before}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallinfo2 are glibc's (2.33 on)")
def test_trim_returns_the_holes_of_freed_temporaries():
    out = subprocess.run([sys.executable, "-c", PATTERN], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["free"] > 32 << 20 and result["grown"] > 32 << 20, result  # the holes are resident
    assert result["trimmed"] is True
    assert result["grown"] - result["after_trim"] > 32 << 20, result  # the trim gave the holes back


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_after_work_at_most_once_per_interval():
    clock, calls = Clock(), []
    heap = HeapTrimmer(interval_s=5.0, clock=clock, trim=calls.append)
    clock.now += 10
    assert not heap.maybe_trim()  # idle since the start: nothing to give back
    heap.worked()
    assert heap.maybe_trim() and calls == [0]
    heap.worked()
    clock.now += 4.9
    assert not heap.maybe_trim()  # within the interval
    clock.now += 0.2
    assert heap.maybe_trim() and heap.trims == 2
    clock.now += 60
    assert not heap.maybe_trim()  # no work since the last trim


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr("jackfield.server.heap.libc_malloc_trim", lambda: None)
    heap = HeapTrimmer(interval_s=0.0)
    heap.worked()
    assert not heap.maybe_trim() and heap.trims == 0
