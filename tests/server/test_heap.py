"""The scheduler process's heap (jackfield.server.heap): freed forward temporaries go back to the system.

Each case runs in a fresh interpreter (malloc's settings are per process): one 16 MiB block freed
first (which raises glibc's dynamic mmap threshold), then 64 temporaries of 1 to 8 MiB, each
followed by a small block that stays alive, as a forward's activations and a request's state
interleave. Unpinned, the temporaries are carved from the heap and its freed holes stay resident
(about 90 MB here); pinned, each is unmapped when freed.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the mmap threshold is a glibc malloc setting")

PATTERN = """
import ctypes, json, sys
import torch
from jackfield.server.heap import pin_mmap_threshold

pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
first = torch.ones(16 << 20, dtype=torch.uint8)
del first
before = libc.mallinfo2().arena
keep = []
for i in range(64):
    temporary = torch.ones((1 << 20) * (1 + i % 8), dtype=torch.uint8)
    keep.append(torch.ones(1024, dtype=torch.uint8))
    del temporary
after = libc.mallinfo2()
print(json.dumps({"pinned": pinned, "heap_growth": after.arena - before, "heap_free": after.fordblks}))
"""


def run_pattern(pin: bool, threshold_env: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if threshold_env is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = threshold_env
    out = subprocess.run([sys.executable, "-c", PATTERN, "pin" if pin else "no"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_temporaries_leave_the_heap_when_pinned():
    unpinned = run_pattern(pin=False)
    pinned = run_pattern(pin=True)
    assert pinned["pinned"] is True
    assert unpinned["heap_growth"] > 32 << 20, unpinned  # glibc's dynamic threshold keeps the holes
    assert pinned["heap_growth"] < 1 << 20, pinned
    assert pinned["heap_free"] < 4 << 20, pinned


def test_the_environment_variable_wins():
    result = run_pattern(pin=True, threshold_env=str(64 << 20))
    assert result["pinned"] is False
    assert result["heap_growth"] > 32 << 20, result  # the user's 64 MiB threshold kept
