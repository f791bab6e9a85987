"""LoRA tests: helpers of the engine, scheduler and server tests on the path; single-threaded torch.

SmolLM2 and the tiny Llama are small enough that torch's intra-op threads only add synchronization
(and, on a busy machine, spin-waits that slow each op by an order of magnitude), as in the scheduler
tests."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "engine", HERE.parent / "scheduler", HERE.parent / "server", HERE.parent / "gpu"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from sched_harness import one_torch_thread  # noqa: E402,F401 (an autouse fixture)
