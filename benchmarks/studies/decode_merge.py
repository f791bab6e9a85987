"""A `jackfield` command (e.g. `bench latency`) or a benchmark script with the Triton decode kernel
merging its KV splits through the merge kernel instead of in its last split (one more launch per
layer): run it both ways in one session to see what the extra launch costs a decode step.

    python3 benchmarks/studies/decode_merge.py [--merge-kernel] bench latency --model M ...
    python3 benchmarks/studies/decode_merge.py [--merge-kernel] benchmarks/moe_decode_limit.py --model M ...

Without --merge-kernel the command runs as it runs alone. With it, the `triton` backend gets an
empty semaphore buffer, so every decode launch, eager or captured, takes the merge kernel.
"""
from __future__ import annotations

import runpy
import sys

import torch


def use_merge_kernel() -> None:
    from jackfield_plugins.attention.triton import TritonAttnBackend

    TritonAttnBackend._semaphores = lambda self, batch_size: torch.zeros(0, dtype=torch.int32,
                                                                          device=self.runtime.device)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--merge-kernel" in argv:
        argv.remove("--merge-kernel")
        use_merge_kernel()
    if argv and argv[0].endswith(".py"):
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    else:
        from jackfield.cli import main

        sys.exit(main(argv))
