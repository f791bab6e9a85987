"""Tune the `triton` MoE dispatcher's block configurations for expert shapes on this GPU.

For each shape and batch size, a few candidate configs (GEMV form while the pairs are few,
grouped-GEMM tiles otherwise) run the expert computation (bf16 activations, random routing; plain
bf16 or block-wise FP8 experts) from one CUDA graph rotating over weight copies beyond L2
(jackfield.bench.common.replay_ms); the fastest config whose output matches the default config's
within bf16 noise wins. The table is written where the dispatcher reads it (`--config-dir`, default
`plugins/moe/configs/`), `E=..,H=..,I=..,device=<GPU>[,dtype=fp8_block].json`, plus all timings to --out.

The candidates follow the kernels' structure, so a shape tunes in well under a minute: the GEMV
form is bound by the weight stream, so only the row tile (programs per pair: about two waves of the
SMs at batch 1) and the K tile (bytes in flight per program) vary, with GEMV 2 split by pair (its
rows summed by a launch, or added atomically into the output); the
grouped GEMM varies BLOCK_M around the mean pairs per expert (a tile mostly full, few padded rows)
and two N x K tiles, with the warps and stages the tile's size needs. Every candidate is compiled
first by `--jobs` processes in parallel (Triton's disk cache then serves the tuning loop). Once
`--budget-s` has passed for a shape, the remaining batch sizes try only the default and the previous
winner.

    python benchmarks/tune_fused_moe.py --shape qwen3-30b-a3b,deepseek-v2-lite --out tune-moe.json
        [--batches 1,2,4,8,16,32,64,128,256] [--format unquantized|fp8_block] [--config-dir DIR] [--budget-s 45]
        [--jobs 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from jackfield.bench.common import provenance, replay_ms
from jackfield.sdk import route
from jackfield_plugins.moe.triton_kernels import fused_experts
from jackfield_plugins.moe.triton_kernels.configs import CONFIG_DIR, config_file_name, default_config, device_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe_kernels import COLD_BYTES, MAX_COPIES, SHAPES  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FP8_BLOCK = (128, 128)


def candidates(pairs: int, num_experts: int) -> list[dict]:
    out = []
    if pairs <= 128:
        for bn, bk, bn2 in ((16, 256, 16), (32, 256, 16), (16, 128, 32), (32, 128, 32), (64, 256, 32)):
            out.append({"path": "gemv", "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_N2": bn2, "BLOCK_K2": bk, "SPLIT2": True,
                        "num_warps": 4, "num_stages": 2})
        out.append({"path": "gemv", "BLOCK_N": 16, "BLOCK_K": 256, "BLOCK_N2": 16, "BLOCK_K2": 256, "SPLIT2": False,
                    "num_warps": 4, "num_stages": 2})
        out += [{**c, "ATOMIC2": True} for c in out[:2]]  # GEMV 2 adding into the output: no summing launch
    if pairs >= 64:
        per_expert = pairs / num_experts
        ms = (16, 32) if per_expert <= 16 else (32, 64) if per_expert <= 64 else (64, 128)
        for bm in ms:
            for bn, bk in ((64, 64), (128, 64), (64, 128)):
                out.append({"path": "gemm", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 1 if bm <= 32 else 8,
                            "num_warps": 4 if bm * bn <= 64 * 64 else 8, "num_stages": 3 if bk == 64 else 2})
    return out


def expert_weights(e: int, h: int, i: int, fmt: str, gen) -> tuple:
    """(w13, w2, scales or None) of random experts."""
    w13 = torch.randn(e, 2 * i, h, device="cuda", generator=gen) * 0.05
    w2 = torch.randn(e, h, i, device="cuda", generator=gen) * 0.05
    if fmt == "unquantized":
        return w13.bfloat16(), w2.bfloat16(), None
    bn, bk = FP8_BLOCK
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    s13 = torch.rand(e, cdiv(2 * i, bn), cdiv(h, bk), device="cuda", generator=gen) * 2 + 0.5
    s2 = torch.rand(e, cdiv(h, bn), cdiv(i, bk), device="cuda", generator=gen) * 2 + 0.5
    return w13.to(torch.float8_e4m3fn), w2.to(torch.float8_e4m3fn), (s13, s2, FP8_BLOCK)


def _compile_some(task: tuple) -> int:
    """Run each (batch, config) of `task` = (shape, format, items) once, so its kernels are compiled
    into Triton's disk cache (a worker of `precompile`); returns how many ran."""
    shape, fmt, items = task
    e, k, h, i, routing = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    w13, w2, scales = expert_weights(e, h, i, fmt, gen)
    ran = 0
    for batch, cfg in items:
        x = torch.randn(batch, h, device="cuda", generator=gen).bfloat16()
        tw, ti = route(torch.randn(batch, e, device="cuda", generator=gen), routing)
        try:
            fused_experts(x, w13, w2, tw, ti, cfg, scales)
            ran += 1
        except Exception:  # the tuning loop records why
            pass
    torch.cuda.synchronize()
    return ran


def precompile(shapes: list[str], batches: list[int], fmt: str, jobs: int) -> None:
    """Compile every candidate in `jobs` processes first (Triton compiles one kernel at a time, about a
    second each; the tuning loop then loads them from the disk cache). One (batch, config) per
    distinct kernel specialization: the pair count's divisibility by 16 is the only batch-dependent one."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    tasks = []
    for shape in shapes:
        e, k = SHAPES[shape][:2]
        seen, items = set(), []
        for batch in batches:
            for cfg in [default_config(batch, e, k)] + candidates(batch * k, e):
                key = (json.dumps(cfg, sort_keys=True), batch * k % 16 == 0)
                if key not in seen:
                    seen.add(key)
                    items.append((batch, cfg))
        tasks += [(shape, fmt, items[j::jobs]) for j in range(jobs) if items[j::jobs]]
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        ran = sum(pool.map(_compile_some, tasks))
    print(f"precompiled {ran} (batch, config) kernels in {jobs} processes: {time.perf_counter() - start:.1f} s",
          flush=True)


def tune_shape(shape: str, batches: list[int], fmt: str, budget_s: float, config_dir: Path) -> dict:
    e, k, h, i, routing = SHAPES[shape]
    weight_bytes = 3 * e * h * i * (1 if fmt == "fp8_block" else 2)
    copies = max(2, min(MAX_COPIES, -(-COLD_BYTES // weight_bytes)))
    gen = torch.Generator(device="cuda").manual_seed(0)
    weights = [expert_weights(e, h, i, fmt, gen) for _ in range(copies)]
    table, timings, start, last = {}, [], time.perf_counter(), None
    for batch in batches:
        x = torch.randn(batch, h, device="cuda", generator=gen).bfloat16()
        tw, ti = route(torch.randn(batch, e, device="cuda", generator=gen), routing)
        run = lambda w, c: fused_experts(x, w[0], w[1], tw, ti, c, w[2])  # noqa: E731
        default = default_config(batch, e, k)
        ref = run(weights[0], default).float()
        over = time.perf_counter() - start > budget_s
        cands = [default] + [c for c in ([last] if over else candidates(batch * k, e)) if c and c != default]
        best = None
        for cfg in cands:
            try:
                out = run(weights[0], cfg).float()
                if (out - ref).norm() / ref.norm() > 2e-2:
                    raise ValueError("output differs from the default config's")
                ms = replay_ms([lambda w=w, c=cfg: run(w, c) for w in weights], reps=5)
            except Exception as exc:  # a config the compiler or the device rejects
                timings.append({"batch": batch, "config": cfg, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            timings.append({"batch": batch, "config": cfg, "us": ms * 1e3})
            if best is None or ms < best[0]:
                best = (ms, cfg)
        if best is None:
            print(f"{shape} {fmt} batch {batch}: no candidate ran; keeping the default")
            continue
        table[batch], last = best[1], best[1]
        default_us = next((t["us"] for t in timings if t["batch"] == batch and t["config"] == default and "us" in t),
                          float("nan"))
        print(f"{shape} {fmt} batch {batch:>4}: {best[0] * 1e3:8.1f} us (default {default_us:8.1f} us, "
              f"{len(cands)} tried{', over budget' if over else ''})  {best[1]}", flush=True)
    path = config_dir / config_file_name(e, h, i, device_name(torch.device("cuda")), fmt)
    config_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(b): c for b, c in sorted(table.items())}, indent=1) + "\n")
    print(f"{shape} {fmt}: {time.perf_counter() - start:.1f} s, wrote {path}", flush=True)
    return {"shape": shape, "format": fmt, "file": str(path), "table": table, "timings": timings,
            "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen3-30b-a3b", help=f"comma-separated, of {', '.join(sorted(SHAPES))}")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--format", default="unquantized", choices=("unquantized", "fp8_block"))
    ap.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="where the dispatcher's JSON tables go")
    ap.add_argument("--budget-s", type=float, default=45.0, help="per shape; past it only known configs are tried")
    ap.add_argument("--jobs", type=int, default=8, help="processes compiling the candidates first (0: none)")
    ap.add_argument("--out", required=True, help="all timings (JSON)")
    args = ap.parse_args()
    shapes = args.shape.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(unknown)} (known: {', '.join(sorted(SHAPES))})")
    batches = [int(b) for b in args.batches.split(",")]
    if args.jobs > 0:
        precompile(shapes, batches, args.format, args.jobs)
    results = [tune_shape(s, batches, args.format, args.budget_s, args.config_dir) for s in shapes]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**provenance("python3 benchmarks/tune_fused_moe.py " + " ".join(sys.argv[1:])),
                   "device": torch.cuda.get_device_name(), "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
