"""Batch-1 (M = 1) linear layers of the Llama-3.1-8B shapes against the memory bandwidth: for each
shape and weight format, every GEMV configuration the tuner would time, the best of each kernel,
the non-GEMV fallback, and the weight bytes per second each reaches, beside the device's measured
copy bandwidth. It says which shape and which kernel lags the bytes it reads.

Formats: bf16 (cuBLAS), fp8 (per-channel codes: the W8A16 GEMV of jackfield.kernels.gemv, and
_scaled_mm with per-token activation quantization), int4 (group 128: the per-weight-scale GEMV
`word` and the whole-group GEMV of int4_kernels.py, `grouped1` (x split in registers) and
`grouped2` (x gathered per code), the dequantizing Triton GEMM, and PyTorch's CUDA int4 kernel
(`aten._weight_int4pack_mm`, tinygemm: tensor cores, bf16 scales and offsets; its error against the
dequantized weight is recorded as `rel_error`).
Every call reads its own copy of the weight (150 MB of copies per path: weights come from DRAM),
calls are replayed from one CUDA graph, median of 10 replays.

    python3 benchmarks/studies/gemv_bandwidth.py [--formats bf16,fp8,int4] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from jackfield.bench.common import copy_gbps, provenance, replay_ms
from llama8b_shapes import LINEAR_SHAPES
from quant_gemm import copies_for


def timed(calls) -> float | str:
    try:
        return replay_ms(calls) * 1e3
    except Exception as exc:  # noqa: BLE001 - a configuration this GPU cannot run
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def measure(n: int, k: int, formats: set[str]) -> list[dict]:
    """One record per (format, path, config): microseconds and weight GB/s."""
    from jackfield.kernels.gemv import candidates, fits, gemv
    from jackfield.sdk import WeightScale
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant import int4_tinygemm as tinygemm
    from jackfield_plugins.quant.int4_linear import gemv_configs

    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda") * 0.02
    rows = []

    def record(fmt, path, cfg, us, nbytes):
        row = {"format": fmt, "path": path,
               "config": f"{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}" if cfg is not None else ""}
        if isinstance(us, float):
            row.update(us=us, gb_per_s=nbytes / us / 1e3)
        else:
            row["error"] = us
        rows.append(row)

    if "bf16" in formats:
        wb = [w.bfloat16() for _ in range(copies_for(n * k * 2))]
        record("bf16", "cublas", None, timed([lambda t=t: F.linear(x, t) for t in wb]), n * k * 2)
        del wb
    if "fp8" in formats:
        q, s = fp8.quantize_per_channel(w)
        reps = [(q.clone(), s.clone()) for _ in range(copies_for(q.numel()))]
        nbytes = q.numel() + s.numel() * 4

        def scaled_mm(t):
            xq, xs = fk.quantize_activations(x)
            return torch._scaled_mm(xq, t[0].t(), scale_a=xs, scale_b=t[1].view(1, -1), out_dtype=torch.bfloat16)

        record("fp8", "scaled_mm", None, timed([lambda t=t: scaled_mm(t) for t in reps]), nbytes)
        wsc = WeightScale(s)
        for cfg in candidates(wsc):
            if fits(cfg, k, wsc):
                calls = [lambda t=t, c=cfg: gemv(x, t[0], None, c, WeightScale(t[1])) for t in reps]
                record("fp8", "gemv", cfg, timed(calls), nbytes)
        del reps
    if "int4" in formats:
        q4, s4, z4 = int4.quantize(w, 128)
        packed, s16, z16 = int4.pack(q4, 1), s4.half(), z4.half()
        reps = [(packed.clone(), s16.clone(), z16.clone()) for _ in range(copies_for(packed.numel() * 4))]
        nbytes = packed.numel() * 4 + s16.numel() * 4
        record("int4", "triton_mm", None, timed([lambda t=t: k4.int4_matmul(x, *t, 128, None) for t in reps]), nbytes)
        for cfg in gemv_configs(k, 128):
            path = f"gemv_grouped{cfg.grouped}" if cfg.grouped else "gemv_word"
            record("int4", path, cfg, timed([lambda t=t, c=cfg: k4.int4_gemv(x, *t, 128, None, c) for t in reps]),
                   nbytes)
        del reps
        ref = x.float() @ int4.dequantize(q4, s16, z16, None).t()
        for tiles in (2, 4, 8):  # PyTorch's CUDA int4 kernel (tinygemm): bf16 scales and float zeros
            try:
                tg = tinygemm.pack_on_device(q4, tiles), tinygemm.scale_table(s16, z16)
                y = tinygemm.matmul(x, tg[0], 128, tg[1])
                err = float((y.float() - ref).norm() / ref.norm())
                reps = [tuple(t.clone() for t in tg) for _ in range(copies_for(nbytes))]
                us = timed([lambda t=t: tinygemm.matmul(x, t[0], 128, t[1]) for t in reps])
            except Exception as exc:  # noqa: BLE001 - an op this torch build lacks
                us, err = f"{type(exc).__name__}: {str(exc)[:120]}", None
            record("int4", f"tinygemm_k{tiles}", None, us, nbytes)
            rows[-1]["rel_error"] = err
            reps = None
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="bf16,fp8,int4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    formats = set(args.formats.split(","))
    bw = copy_gbps(1 << 30)
    print(f"copy bandwidth {bw:.0f} GB/s (read + write)")
    results = {}
    print("| shape | format | path | best config | us | weight GB/s | of copy bw |")
    print("|---|---|---|---|---|---|---|")
    for name, (n, k) in LINEAR_SHAPES.items():
        rows = measure(n, k, formats)
        results[name] = rows
        best = {}
        for r in rows:
            key = (r["format"], r["path"])
            if "us" in r and (key not in best or r["us"] < best[key]["us"]):
                best[key] = r
        for (fmt, path), r in best.items():
            print(f"| {name} {n}x{k} | {fmt} | {path} | {r['config']} | {r['us']:.1f} | {r['gb_per_s']:.0f} | "
                  f"{r['gb_per_s'] / bw:.0%} |", flush=True)
        for r in rows:
            if "error" in r:
                print(f"  failed {name} {r['format']} {r['path']} {r['config']}: {r['error']}")
    if args.out:
        with open(args.out, "w") as f:
            command = "python3 benchmarks/studies/gemv_bandwidth.py " + " ".join(sys.argv[1:])
            json.dump({**provenance(command), "copy_gbps": bw, "shapes": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
