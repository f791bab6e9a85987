"""Quantized linear layers of the Llama-3.1-8B shapes on the GPU, every path side by side, at batch
1 and 256 rows (and any --rows): the measured table the GEMM choices of the quantization methods
(`quantization_gemm_backend auto`) are read from.

Paths, each timed as a whole (activation quantization included where the path has it):
  bf16      cuBLAS on the bf16 weight (the baseline)
  fp8       scaled_mm: Triton per-token quantization + torch._scaled_mm (rowwise)
            triton:    Triton per-token quantization + the Triton W8A8 GEMM
            gemv:      (one row) the W8A16 Triton GEMV on the FP8 codes, best tuned configuration
  fp8-block triton:    per-token-group quantization + the Triton block-scaled GEMM
            scaled_mm: per-token-group quantization + torch's block-scaled matmul (where supported)
            gemv:      (one row) the W8A16 GEMV with block scales
  int8      gemv (one row), triton (the W8A16 GEMM), dequant+cublas
  int4      gemv (one row, best configuration of int4_linear.GEMV_CONFIGS), triton (the dequantizing
            GEMM), dequant+cublas (Triton dequantization, then cuBLAS); group 128
Every call reads its own copy of the weight (at least 150 MB of copies per path), so weights come
from DRAM as in a real forward; calls are replayed from one CUDA graph (no launch overhead), median
of 10 replays. Prints a table per row count and writes JSON.

    python3 benchmarks/studies/quant_gemm.py [--rows 1,256] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

from jackfield.bench.common import provenance, replay_ms
from jackfield.kernels.gemv import candidates, fits, gemv
from jackfield.sdk import WeightScale
from llama8b_shapes import LINEAR_SHAPES

COPY_BYTES = 150 << 20  # above the H100's 50 MB L2, per path


def copies_for(nbytes: int) -> int:
    return max(2, math.ceil(COPY_BYTES / nbytes))


def best_of(calls_for_cfg, configs) -> tuple[float, object]:
    """The fastest configuration: (ms, cfg); configs that fail to compile are skipped."""
    best = (float("inf"), None)
    for cfg in configs:
        try:
            ms = replay_ms(calls_for_cfg(cfg))
        except Exception as exc:  # noqa: BLE001 - a configuration this GPU cannot run
            print(f"  skip {cfg}: {type(exc).__name__}: {str(exc)[:80]}", file=sys.stderr)
            continue
        best = min(best, (ms, cfg), key=lambda t: t[0])
    return best


def measure(n: int, k: int, m: int) -> dict[str, dict]:
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant.fp8 import blockwise_scaled_mm
    from jackfield_plugins.quant.int4_linear import GEMV_CONFIGS, Int4GemvConfig, gemv_fits
    from jackfield_plugins.quant.int8_wo import quantize_int8
    from jackfield_plugins.quant.w8a16_kernels import w8a16_matmul

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda") * 0.02
    out: dict[str, dict] = {}

    def record(method: str, path: str, calls_or_ms, weight_bytes: int, note: str = "") -> None:
        try:
            ms = calls_or_ms if isinstance(calls_or_ms, float) else replay_ms(calls_or_ms)
        except Exception as exc:  # noqa: BLE001 - report the path as unavailable, keep the others
            out.setdefault(method, {})[path] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            return
        out.setdefault(method, {})[path] = {"us": ms * 1e3, "gb_per_s": weight_bytes / ms / 1e6, "note": note}

    wb = w.bfloat16()
    ws_bf16 = [wb.clone() for _ in range(copies_for(wb.numel() * 2))]
    record("bf16", "cublas", [lambda t=t: F.linear(x, t) for t in ws_bf16], n * k * 2)

    for method, block in (("fp8", None), ("fp8-block", (128, 128))):
        q, s = fp8.quantize_per_channel(w) if block is None else fp8.quantize_blockwise(w, block)
        reps = [(q.clone(), s.clone()) for _ in range(copies_for(q.numel()))]
        nbytes = q.numel() + s.numel() * 4
        group = block[1] if block else None

        def w8a8(t, torch_mm):
            xq, xs = fk.quantize_activations(x, group)
            if not torch_mm:
                return fk.w8a8_matmul(xq, xs, t[0], t[1], block, None, torch.bfloat16)
            if block is None:
                return torch._scaled_mm(xq, t[0].t(), scale_a=xs, scale_b=t[1].view(1, -1), out_dtype=torch.bfloat16)
            return blockwise_scaled_mm(xq, xs, t[0], t[1], torch.bfloat16)

        record(method, "scaled_mm", [lambda t=t: w8a8(t, True) for t in reps], nbytes)
        record(method, "triton", [lambda t=t: w8a8(t, False) for t in reps], nbytes)
        if m == 1:
            wsc = WeightScale(s, block)
            cfgs = [c for c in candidates(wsc) if fits(c, k, wsc)]
            ms, cfg = best_of(lambda c: [lambda t=t: gemv(x, t[0], None, c, WeightScale(t[1], block)) for t in reps],
                              cfgs)
            record(method, "gemv", ms, nbytes, str(cfg))

    q8, s8 = quantize_int8(w)
    reps = [(q8.clone(), s8.clone()) for _ in range(copies_for(q8.numel()))]
    nbytes = q8.numel() + s8.numel() * 4
    record("int8", "triton", [lambda t=t: w8a16_matmul(x, t[0], t[1], None) for t in reps], nbytes)
    record("int8", "dequant+cublas", [lambda t=t: (F.linear(x, t[0].to(x.dtype)).float() * t[1]).bfloat16()
                                      for t in reps], nbytes)
    if m == 1:
        wsc = WeightScale(s8)
        cfgs = [c for c in candidates(wsc) if fits(c, k, wsc)]
        ms, cfg = best_of(lambda c: [lambda t=t: gemv(x, t[0], None, c, WeightScale(t[1])) for t in reps], cfgs)
        record("int8", "gemv", ms, nbytes, str(cfg))

    q4, s4, z4 = int4.quantize(w, 128)
    packed, s16, z16 = int4.pack(q4, 1), s4.half(), z4.half()
    reps = [(packed.clone(), s16.clone(), z16.clone()) for _ in range(copies_for(packed.numel() * 4))]
    nbytes = packed.numel() * 4 + s16.numel() * 4
    record("int4", "triton", [lambda t=t: k4.int4_matmul(x, *t, 128, None) for t in reps], nbytes)
    record("int4", "dequant+cublas", [lambda t=t: F.linear(x, k4.int4_dequantize(*t, 128, x.dtype)) for t in reps],
           nbytes)
    if m == 1:
        cfgs = [Int4GemvConfig(*c) for c in GEMV_CONFIGS if gemv_fits(c[1], k, 128)]
        ms, cfg = best_of(lambda c: [lambda t=t: k4.int4_gemv(x, *t, 128, None, c) for t in reps], cfgs)
        record("int4", "gemv", ms, nbytes, str(cfg))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,256")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for m in [int(r) for r in args.rows.split(",")]:
        print(f"\n## {m} row(s): microseconds per call (weight GB/s)")
        print("| method | path | " + " | ".join(f"{name} {n}x{k}" for name, (n, k) in LINEAR_SHAPES.items()) + " |")
        print("|---|---|" + "---|" * len(LINEAR_SHAPES))
        per_shape = {name: measure(n, k, m) for name, (n, k) in LINEAR_SHAPES.items()}
        results[m] = per_shape
        first = next(iter(per_shape.values()))
        for method, paths in first.items():
            for path in paths:
                cells = []
                for name in LINEAR_SHAPES:
                    r = per_shape[name].get(method, {}).get(path, {})
                    cells.append(f"{r['us']:.1f} ({r['gb_per_s']:.0f})" if "us" in r else "n/a")
                print(f"| {method} | {path} | " + " | ".join(cells) + " |")
        errors = {f"{s}/{meth}/{p}": r["error"] for s, d in per_shape.items() for meth, ps in d.items()
                  for p, r in ps.items() if "error" in r}
        for key, err in errors.items():
            print(f"  unavailable {key}: {err}")
    if args.out:
        with open(args.out, "w") as f:
            command = "python3 benchmarks/studies/quant_gemm.py " + " ".join(sys.argv[1:])
            json.dump({**provenance(command), "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
