"""Fill Triton's cache with every batch-1 GEMV kernel the GEMV tuner times for the 8B shapes (the
INT4 GEMVs of awq / gptq, the FP8 code GEMV with its fused norm and SiLU-and-mul prologues, the
INT4 matmul the tuner compares them with and the prefill kernels), compiled by `--jobs` processes
at once. A decode run started afterwards loads them from the cache instead of compiling them one
after another while it tunes (tens of seconds on a fresh machine).

    python3 benchmarks/gemv_warm.py --jobs 14 [--seconds 14]

The calls run on 64-row weights with K = 4096: every size and stride a multiple of 16, as in the
8B layers, so Triton specializes them the same way. A configuration that fails to compile is
printed and skipped (the tuner skips it too)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def calls() -> list:
    """Every kernel launch to compile, as zero-argument callables (CUDA)."""
    import torch

    from jackfield.kernels.gemv import candidates, fits, gemv, gemv_rmsnorm, gemv_silu_mul
    from jackfield.sdk import WeightScale
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant.int4_linear import gemv_configs

    k, group, cuda = 4096, 128, dict(device="cuda", dtype=torch.bfloat16)
    x, res, gu = torch.randn(1, k, **cuda), torch.randn(1, k, **cuda), torch.randn(1, 2 * k, **cuda)
    g, w = torch.ones(k, **cuda), torch.randn(64, k, device="cuda") * 0.02
    q8, s8 = fp8.quantize_per_channel(w)
    ws = WeightScale(s8)
    q4, s4, z4 = int4.quantize(w, group)
    i4 = (int4.pack(q4, 1), s4.half(), z4.half())
    jobs = []
    for c in (c for c in candidates(ws) if fits(c, k, ws)):
        jobs += [lambda c=c: gemv(x, q8, None, c, ws), lambda c=c: gemv_rmsnorm(x, None, g, 1e-6, q8, None, c, ws),
                 lambda c=c: gemv_rmsnorm(x, res, g, 1e-6, q8, None, c, ws),
                 lambda c=c: gemv_silu_mul(gu, q8, None, c, ws)]
    jobs += [lambda c=c: k4.int4_gemv(x, *i4, group, None, c) for c in gemv_configs(k, group)]
    for m in (1, 16, 128):  # the tuner's baseline (one row) and prefill
        xm = torch.randn(m, k, **cuda)
        jobs += [lambda xm=xm: k4.int4_matmul(xm, *i4, group, None), lambda xm=xm: fk.quantize_activations(xm)]
    return jobs


def run_part(part: int, parts: int) -> int:
    import torch

    jobs = calls()[part::parts]
    failed = 0
    for job in jobs:
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - a configuration the tuner would skip too
            failed += 1
            print(f"{type(exc).__name__}: {str(exc)[:200]}", flush=True)
    torch.cuda.synchronize()
    print(f"part {part}: {len(jobs)} calls, {failed} failed", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=14, help="processes compiling at once")
    ap.add_argument("--seconds", type=float, default=0, help="stop waiting for the processes after this long")
    ap.add_argument("--part", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part is not None:
        return run_part(args.part, args.jobs)
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "--jobs", str(args.jobs), "--part", str(i)])
             for i in range(args.jobs)]
    for p in procs:
        try:
            p.wait(timeout=max(args.seconds - (time.monotonic() - start), 0.1) if args.seconds else None)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print(f"gemv_warm: {sum(p.returncode == 0 for p in procs)} of {args.jobs} parts finished in "
          f"{time.monotonic() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
