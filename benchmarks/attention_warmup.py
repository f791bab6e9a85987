"""Compile an attention backend's kernels for one shape before tests or timed runs use them.

FlashInfer JIT-builds one module per kernel variant on its first use on a machine, minutes each on a
fresh one: the causal prefill (its sm90 kernel on Hopper), the custom-mask prefill that speculative
verify and tensor-core decode (4+ query heads per KV head) share, the CUDA-core decode. A test run or
benchmark that meets them one after another spends its time limit compiling them in turn. This runs
one forward per mode (extend, decode, verify), each in its own process at the same time, so the
modules build side by side; every later process loads them from FlashInfer's cache. Modes sharing a
module wait for one build (FlashInfer locks it). Triton backends compile their kernels the same way.

    python benchmarks/attention_warmup.py --backend flashinfer [--dtype bfloat16] [--heads 32 --kv-heads 8]
        [--head-dim 128] [--page-size 16] [--modes extend,decode,verify] [--sliding-window N] [--device cuda]

Prints one line per mode (seconds, ok or the error) and exits 1 if any mode failed.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time

MODES = ("extend", "decode", "verify")
TREE = [-1, 0, 0, 1, 1, 2]  # a small draft tree (node j's parent) for the verify forward


def backend_class(name: str):
    """The registered attention backend called `name` (its class, not constructed)."""
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    registry = build_registry(*load_plugins(env={}))
    infos = registry.candidates("attention", name)
    if not infos:
        names = sorted({i.name for i in registry.of_kind("attention")})
        raise SystemExit(f"no attention backend named '{name}' (registered: {', '.join(names)})")
    return infos[0].cls


def run_mode(args: argparse.Namespace, mode: str) -> None:
    """One forward of `mode` through the backend: plans it and launches its kernels (building them)."""
    import torch

    from jackfield.testing.attn_problem import AttnProblem

    cls = backend_class(args.backend)
    avail = cls.availability()
    if not avail.ok:
        raise SystemExit(f"{args.backend} is unavailable: {avail.reason}")
    new = len(TREE) if mode != "decode" else 1
    p = AttnProblem([37], [new], args.heads, args.kv_heads, args.head_dim, args.page_size,
                    getattr(torch, args.dtype), args.device)
    backend, layer = cls(p.runtime()), p.layer(sliding_window=args.sliding_window)
    batch = {"extend": p.extend_batch, "decode": p.decode_batch,
             "verify": lambda b: p.verify_batch(b, [TREE])}[mode]
    fb, q, k, v = batch(backend)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    if out.is_cuda:
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="flashinfer")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--sliding-window", type=int, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)  # run one mode in this process
    args = ap.parse_args(argv)
    if args.child:
        run_mode(args, args.child)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)} (choose from {', '.join(MODES)})")
    argv = sys.argv[1:] if argv is None else list(argv)
    start = time.perf_counter()
    procs = {m: subprocess.Popen([sys.executable, __file__, *argv, "--child", m], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for m in modes}
    failed = 0
    for mode, proc in procs.items():
        output, rc = proc.communicate()[0], proc.returncode
        took = time.perf_counter() - start
        if rc == 0:
            print(f"{mode}: ok (done by {took:.0f} s)")
        else:
            failed += 1
            tail = output.strip().splitlines()[-1] if output.strip() else f"exit status {rc}"
            print(f"{mode}: FAILED (done by {took:.0f} s): {tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
