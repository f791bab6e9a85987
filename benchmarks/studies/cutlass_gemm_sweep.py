"""The CUTLASS Hopper GEMMs (`cutlass_gemm.py` beside this script) against cuBLAS on the Llama-3.1-8B
linear shapes, per row count: every compiled configuration under each tile schedule.

Each point replays a CUDA graph of calls that cycle through enough copies of the weight to exceed
the L2 cache, so weights come from DRAM as in a real forward and no launch overhead counts. Every
candidate's output is checked against F.linear first (a wrong kernel is reported, never timed).

    python benchmarks/studies/cutlass_gemm_sweep.py --rows 256,16384 --out results.json
    python benchmarks/studies/cutlass_gemm_sweep.py --rows 16384 --shapes qkv_proj,gate_up_proj --out results.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import cutlass_gemm  # benchmarks/studies/cutlass_gemm.py: scripts run as `python benchmarks/...` see their folder
import torch
import torch.nn.functional as F
from jackfield.bench.common import provenance, replay_ms
from llama8b_shapes import LINEAR_SHAPES, LM_HEAD

SHAPES = {**LINEAR_SHAPES, "lm_head": LM_HEAD}
L2_BYTES = 160 << 20
MODES = ("heuristic", "stream_k", "data_parallel")


def schedules(cfg_name: str, m: int) -> list[tuple[str, int]]:
    """Decode sizes: the decomposition modes (swizzle 1); large M: swizzle and raster order, which
    decide how well the L2 cache serves the tiles that run at the same time."""
    if m > 2048:
        return [(f"swizzle {sw} {r}", cutlass_gemm.schedule(swizzle=sw, raster=r))
                for sw in (1, 2, 4, 8) for r in ("along_m", "along_n")]
    modes = ("heuristic",) if "pingpong" in cfg_name else MODES  # ping-pong: one persistent schedule
    return [(md, cutlass_gemm.schedule(md)) for md in modes]


def time_ms(fn, weights: list[torch.Tensor], m: int) -> float:
    calls = 24 if m <= 2048 else 6
    return replay_ms([lambda w=weights[i % len(weights)]: fn(w) for i in range(calls)], reps=5 if m > 2048 else 10)


def sweep_shape(lib, name: str, n: int, k: int, m: int) -> dict:
    copies = max(2, -(-L2_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, weights[0]).float()
    cublas = time_ms(lambda w: torch.matmul(x, w.T, out=out), weights, m)
    flop = 2.0 * m * n * k
    row = {"shape": name, "m": m, "n": n, "k": k, "cublas_us": cublas * 1e3, "cublas_tflops": flop / cublas / 1e9,
           "candidates": []}
    for cfg, cfg_name in enumerate(lib.configs):
        for sched_name, sched in schedules(cfg_name, m):
            cand = {"config": cfg_name, "schedule": sched_name}
            try:
                got = lib.gemm(x, weights[0], cfg, sched).float()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                if err > 2e-2:
                    cand["error"] = f"wrong result: max rel err {err:.3g}"
                else:
                    ms = time_ms(lambda w, c=cfg, sc=sched: lib.gemm(x, w, c, sc, out=out), weights, m)
                    cand.update(us=ms * 1e3, tflops=flop / ms / 1e9, speedup=cublas / ms)
            except Exception as exc:  # noqa: BLE001 - report the failing candidate, keep sweeping
                cand["error"] = str(exc)[:200]
            row["candidates"].append(cand)
    best = min((c for c in row["candidates"] if "us" in c), key=lambda c: c["us"], default=None)
    row["best"] = best
    print(f"{name:13s} M={m:6d}  cuBLAS {cublas * 1e3:8.1f} us  best {best['us'] if best else float('nan'):8.1f} us "
          f"({best['config'] + ', ' + best['schedule'] if best else '-'}) x{best['speedup'] if best else 0:.3f}", flush=True)
    del weights
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="128,256,16384")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    lib = cutlass_gemm.library()
    print(f"library ready in {time.time() - t0:.1f} s: {len(lib.configs)} configs", flush=True)
    rows = [sweep_shape(lib, s, *SHAPES[s], int(m)) for m in args.rows.split(",") for s in args.shapes.split(",")]
    report = {**provenance(" ".join(sys.argv)), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
