"""The `gguf` method's CUDA kernels against the memory bandwidth: per GGUF type, the batch-1 GEMV on the
8B model's linear shapes (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336) in GB/s
of weight planes read (plus x and y), for each GEMV configuration the Gemv tuner times (types in
--sweep; the others only the default), next to dequantize + cuBLAS (the tuner's baseline) and
bfloat16 cuBLAS on the same shape, and the device's copy bandwidth; then, on the o shape, 2, 16 and
2048 rows: the dequantize-in-registers GEMM against dequantize + cuBLAS (what `auto` takes from
two rows) and bfloat16 cuBLAS.

The weights are random bytes repacked on the GPU (the timing does not depend on the values). Times
are triton.testing.do_bench's medians (L2 flushed before each call). Results go to --out as JSON,
written after each type, and a table to stdout.

    python benchmarks/gguf_gemv.py --out gguf-gemv.json [--types Q4_K Q6_K ...] [--sweep Q4_K Q6_K] [--shapes qkv down]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from jackfield.bench.common import copy_gbps, provenance
from jackfield_plugins.quant.gguf_kernels import GEMV_CONFIGS, GEMV_DEFAULT, gguf_dequantize, gguf_gemv, gguf_matmul
from jackfield_plugins.quant.gguf_layout import repack

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
TYPES = ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_K", "Q4_1"]


def planes_of(name: str, n: int, k: int):
    t = T[name]
    size, nbytes = GGML_QUANT_SIZES[t]
    blocks = torch.randint(0, 256, (n, k // size * nbytes), dtype=torch.uint8, device="cuda")
    return repack(blocks, t, k)


def nbytes(planes) -> int:
    return sum(t.numel() * t.element_size() for t in planes.tensors().values())


def bench(fn) -> float:
    """Microseconds a call (median of do_bench's runs)."""
    return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median") * 1e3


def cfg_name(c) -> str:
    return f"{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}" + (" ahead" if c.ahead else "")


def gemv_row(name: str, label: str, n: int, k: int, configs) -> dict:
    p = planes_of(name, n, k)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    moved = nbytes(p) + 2 * (k + n)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    row = {"shape": label, "n": n, "k": k, "bytes": moved, "bits_per_weight": 8 * nbytes(p) / (n * k),
           "bf16_cublas_us": bench(lambda: F.linear(x, w16)),
           "dequant_cublas_us": bench(lambda: F.linear(x, gguf_dequantize(p, x.dtype))), "configs": []}
    row["bf16_cublas_gbps"] = 2 * n * k / row["bf16_cublas_us"] / 1e3
    del w16
    for cfg in configs:
        if k % cfg.block_k:
            continue  # the tuner skips a configuration whose step does not divide K
        try:
            us = bench(lambda: gguf_gemv(x, p, None, cfg))
            row["configs"].append({"config": cfg_name(cfg), "us": us, "gbps": moved / us / 1e3,
                                   "default": cfg == GEMV_DEFAULT})
        except Exception as exc:  # a configuration the compiler rejects (registers, shared memory)
            row["configs"].append({"config": cfg_name(cfg), "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    timed = [c for c in row["configs"] if "us" in c]
    if timed:
        row["best"] = min(timed, key=lambda c: c["us"])
        row["speedup_vs_bf16"] = row["bf16_cublas_us"] / row["best"]["us"]
    return row


def batch_rows(name: str) -> list[dict]:
    n, k = SHAPES["o"]
    p = planes_of(name, n, k)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    out = []
    for m in (2, 16, 2048):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        out.append({"m": m, "n": n, "k": k, "gguf_matmul_us": bench(lambda: gguf_matmul(x, p)),
                    "dequant_cublas_us": bench(lambda: F.linear(x, gguf_dequantize(p, x.dtype))),
                    "bf16_cublas_us": bench(lambda: F.linear(x, w16))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--sweep", nargs="*", default=["Q4_K", "Q6_K"], help="types timed in every GEMV configuration")
    ap.add_argument("--batch", nargs="*", default=["Q4_K"], help="types timed at 2, 16 and 2048 rows")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="GEMV shapes timed")
    args = ap.parse_args()
    result = {**provenance("python3 benchmarks/gguf_gemv.py " + " ".join(sys.argv[1:])),
              "device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps(1 << 30), "types": []}
    print(f"device {result['device']}, copy bandwidth {result['copy_gbps']:.0f} GB/s", flush=True)
    for name in args.types:
        configs = GEMV_CONFIGS if name in args.sweep else (GEMV_DEFAULT,)
        r = {"type": name, "gemv": [], "batch": []}
        result["types"].append(r)
        for label in args.shapes:
            n, k = SHAPES[label]
            row = gemv_row(name, label, n, k, configs)
            r["gemv"].append(row)
            Path(args.out).write_text(json.dumps(result, indent=1))
            d = next((c for c in row["configs"] if c.get("default") and "us" in c), {})
            b = row.get("best", {})
            nan = float("nan")
            print(f"{name:5s} {label:8s} {row['bits_per_weight']:.2f} b/w  default {d.get('gbps', nan):5.0f} GB/s"
                  f"  best {b.get('gbps', nan):5.0f} GB/s ({b.get('config', '-')}) {b.get('us', nan):6.1f} us"
                  f"  dequant+cuBLAS {row['dequant_cublas_us']:6.1f} us  bf16 cuBLAS {row['bf16_cublas_us']:6.1f} us"
                  f"  x{row.get('speedup_vs_bf16', 0):.2f} vs bf16", flush=True)
        if name in args.batch:
            r["batch"] = batch_rows(name)
            Path(args.out).write_text(json.dumps(result, indent=1))
            for e in r["batch"]:
                print(f"{name:5s} o-shape {e['m']:5d} rows: gguf_matmul {e['gguf_matmul_us']:7.1f} us  dequant+cuBLAS "
                      f"{e['dequant_cublas_us']:7.1f} us  bf16 cuBLAS {e['bf16_cublas_us']:7.1f} us", flush=True)


if __name__ == "__main__":
    main()
