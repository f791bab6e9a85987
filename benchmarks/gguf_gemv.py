"""The `gguf` method's CUDA kernels against the memory bandwidth: per GGUF type, the batch-1 GEMV on the
8B model's linear shapes (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336) in GB/s
of weight planes read (plus x and y), for each GEMV block configuration (the default marked), next
to bfloat16 cuBLAS on the same shape and the device's copy bandwidth; then batch 16 (the GEMM) and a
2048-row prefill (the GEMM against dequantize + cuBLAS, which `auto` takes from DEQUANT_ROWS rows).

The weights are random bytes repacked on the GPU (the timing does not depend on the values). Times
are triton.testing.do_bench's (L2 flushed before each call). Results go to --out as JSON, written
after each type, and a table to stdout.

    python benchmarks/gguf_gemv.py --out gguf-gemv.json [--types Q4_K Q6_K ...] [--quick]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from jackfield.bench.common import copy_gbps
from jackfield_plugins.quant.gguf_kernels import gguf_dequantize, gguf_gemv, gguf_matmul
from jackfield_plugins.quant.gguf_layout import repack

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
DEFAULT = (4, 256, 4, 3)  # gguf_gemv's defaults: block_n, block_k limit, num_warps, num_stages
CONFIGS = [DEFAULT, (8, 256, 4, 3), (2, 512, 4, 3), (8, 512, 8, 3), (16, 256, 8, 3)]
TYPES = ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_K", "Q4_1"]


def planes_of(name: str, n: int, k: int):
    t = T[name]
    size, nbytes = GGML_QUANT_SIZES[t]
    blocks = torch.randint(0, 256, (n, k // size * nbytes), dtype=torch.uint8, device="cuda")
    return repack(blocks, t, k)


def nbytes(planes) -> int:
    return sum(t.numel() * t.element_size() for t in planes.tensors().values())


def bench(fn) -> float:
    """Milliseconds a call (median of do_bench's runs)."""
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def run_type(name: str, shapes: dict, configs: list) -> dict:
    out = {"type": name, "gemv": [], "batch16": [], "prefill2048": []}
    for label, (n, k) in shapes.items():
        p = planes_of(name, n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        moved = nbytes(p) + 2 * (k + n)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        dense_ms = bench(lambda: torch.nn.functional.linear(x, w16))
        row = {"shape": label, "n": n, "k": k, "bytes": moved, "bits_per_weight": 8 * nbytes(p) / (n * k),
               "bf16_cublas_us": dense_ms * 1e3, "bf16_cublas_gbps": 2 * n * k / dense_ms / 1e6, "configs": []}
        for cfg in configs:
            bn, bk, warps, stages = cfg
            try:
                ms = bench(lambda: gguf_gemv(x, p, None, bn, bk, warps, stages))
                row["configs"].append({"config": cfg, "us": ms * 1e3, "gbps": moved / ms / 1e6, "default": cfg == DEFAULT})
            except Exception as exc:  # a configuration the compiler rejects (registers, shared memory)
                row["configs"].append({"config": cfg, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        timed = [c for c in row["configs"] if "us" in c]
        if timed:
            best = min(timed, key=lambda c: c["us"])
            row["best"] = best
            row["speedup_vs_bf16"] = row["bf16_cublas_us"] / best["us"]
        out["gemv"].append(row)
        del w16
    n, k = SHAPES["o"]
    p = planes_of(name, n, k)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    for m, key in ((16, "batch16"), (2048, "prefill2048")):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        entry = {"m": m, "n": n, "k": k,
                 "gguf_matmul_us": bench(lambda: gguf_matmul(x, p)) * 1e3,
                 "dequant_cublas_us": bench(lambda: torch.nn.functional.linear(x, gguf_dequantize(p, x.dtype))) * 1e3,
                 "bf16_cublas_us": bench(lambda: torch.nn.functional.linear(x, w16)) * 1e3}
        out[key].append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--quick", action="store_true", help="the default GEMV configuration only")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps(1 << 30), "types": []}
    print(f"device {result['device']}, copy bandwidth {result['copy_gbps']:.0f} GB/s", flush=True)
    for name in args.types:
        r = run_type(name, SHAPES, [DEFAULT] if args.quick else CONFIGS)
        result["types"].append(r)
        Path(args.out).write_text(json.dumps(result, indent=1))
        for row in r["gemv"]:
            d = next((c for c in row["configs"] if c.get("default") and "us" in c), None)
            b = row.get("best", {})
            print(f"{name:5s} {row['shape']:8s} {row['bits_per_weight']:.2f} b/w  default "
                  f"{d['gbps'] if d else float('nan'):6.0f} GB/s  best {b.get('gbps', float('nan')):6.0f} GB/s "
                  f"{tuple(b.get('config', ()))}  {b.get('us', float('nan')):7.1f} us  bf16 cuBLAS "
                  f"{row['bf16_cublas_us']:7.1f} us ({row['bf16_cublas_gbps']:.0f} GB/s)  x{row.get('speedup_vs_bf16', 0):.2f}",
                  flush=True)
        for key in ("batch16", "prefill2048"):
            e = r[key][0]
            print(f"{name:5s} {key:11s} o-shape: gguf_matmul {e['gguf_matmul_us']:8.1f} us  dequant+cuBLAS "
                  f"{e['dequant_cublas_us']:8.1f} us  bf16 cuBLAS {e['bf16_cublas_us']:8.1f} us", flush=True)


if __name__ == "__main__":
    main()
