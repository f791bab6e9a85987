"""Decode-size GEMMs on the Llama-3.1-8B linear shapes: cuBLAS (F.linear) against block configurations
of a Triton GEMM that loads its tiles with the Hopper TMA (optionally warp-specialized).

The experiment behind docs/benchmarks.md's "decode-size GEMMs" section: a GEMM kernel only enters
jackfield if it beats cuBLAS here. (A first version with pointer loads lost by 0.67-0.87x at M 128-256
and tied at M <= 64: `gemm-sweep-20261125-2201.json`.)

Each measurement replays a CUDA graph of 24 calls that cycle through enough copies of the weight to
exceed the L2 cache, so weights come from DRAM as in a real forward and no launch overhead counts.

    python benchmarks/studies/small_gemm_sweep.py --rows 128,256 --out results.json
    python benchmarks/studies/small_gemm_sweep.py --rows 256,16384 --layouts --no-triton --out results.json

--layouts also times cuBLAS on the weight stored transposed ([K, N], `x @ w_t`): cuBLAS picks its
kernel per layout, so the same product can run at a different speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from jackfield.bench.common import provenance, replay_ms
from llama8b_shapes import LINEAR_SHAPES as SHAPES
CALLS, L2_BYTES = 24, 160 << 20
# (block_m, block_n, block_k, num_warps, num_stages, warp_specialize)
CANDIDATES = [(128, 64, 128, 4, 4, False), (128, 128, 64, 8, 4, False), (64, 64, 128, 4, 5, False),
              (64, 128, 128, 4, 4, False), (128, 32, 128, 4, 5, False), (256, 64, 64, 8, 3, False),
              (128, 64, 128, 4, 4, True), (128, 128, 64, 4, 4, True), (64, 64, 128, 4, 5, True)]


@triton.jit
def _tma_gemm_kernel(x_desc, w_desc, y_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m, pid_n = pid % num_m, pid // num_m  # the M-tiles of one weight tile run side by side
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, warp_specialize=WARP_SPECIALIZE):
        x = x_desc.load([pid_m * BLOCK_M, k])
        w = w_desc.load([pid_n * BLOCK_N, k])
        acc = tl.dot(x, w.T, acc)
    y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(y_desc.dtype))


def tma_gemm(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, cfg) -> torch.Tensor:
    bm, bn, bk, warps, stages, ws = cfg
    (m, k), n = x.shape, w.shape[0]
    _tma_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
        TensorDescriptor.from_tensor(y, [bm, bn]), m, n, k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        WARP_SPECIALIZE=ws, num_warps=warps, num_stages=stages)
    return y


def graph_ms(fn, weights: list[torch.Tensor]) -> float:
    """Per-call device time of fn(w) over CALLS calls cycling through `weights`, replayed from a graph."""
    return replay_ms([lambda w=weights[i % len(weights)]: fn(w) for i in range(CALLS)])


FLASHINFER_BACKENDS = ("cublaslt", "cudnn", "tinygemm", "auto")


def flashinfer_rows(x: torch.Tensor, weights: list[torch.Tensor], ref: torch.Tensor) -> list[dict]:
    """FlashInfer's mm_bf16 backends on the same problem, each autotuned over its tactics first."""
    import flashinfer
    from flashinfer.autotuner import autotune

    rows = []
    for backend in FLASHINFER_BACKENDS:
        fn = lambda w, b=backend: flashinfer.mm_bf16(x, w.T, backend=b)  # noqa: E731
        try:
            with autotune(True):
                fn(weights[0])
            err = ((fn(weights[0]).float() - ref).norm() / ref.norm()).item()
            ms = graph_ms(fn, weights)
        except Exception as exc:  # noqa: BLE001 - a backend this GPU or install lacks
            print(f"  flashinfer {backend}: failed: {type(exc).__name__}: {exc}"[:200])
            continue
        rows.append({"config": f"flashinfer:{backend}", "ms": ms, "rel_err": err})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="128,256")
    ap.add_argument("--out", required=True)
    ap.add_argument("--flashinfer", action="store_true", help="also FlashInfer's mm_bf16 backends, autotuned")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton TMA configurations")
    ap.add_argument("--layouts", action="store_true", help="also cuBLAS with the weight stored as [K, N]")
    args = ap.parse_args()
    results = {**provenance("python3 benchmarks/studies/small_gemm_sweep.py " + " ".join(sys.argv[1:])),
               "device": torch.cuda.get_device_name(), "rows": []}
    for m in (int(v) for v in args.rows.split(",")):
        for name, (n, k) in SHAPES.items():
            copies = max(2, -(-L2_BYTES // (2 * n * k)))
            weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x, weights[0]).float()
            base = graph_ms(lambda w: F.linear(x, w), weights)
            row = {"gemm": name, "m": m, "n": n, "k": k, "cublas_ms": base, "configs": []}
            y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            for cfg in CANDIDATES if not args.no_triton else ():
                try:
                    err = ((tma_gemm(x, weights[0], y, cfg).float() - ref).norm() / ref.norm()).item()
                    ms = graph_ms(lambda w, c=cfg: tma_gemm(x, w, y, c), weights)
                except Exception as exc:  # noqa: BLE001 - a config this Triton cannot compile
                    print(f"  {cfg}: failed: {type(exc).__name__}: {exc}"[:200])
                    continue
                row["configs"].append({"config": list(cfg), "ms": ms, "rel_err": err})
            if args.layouts:
                w_t = [w.t().contiguous() for w in weights]
                err = ((torch.mm(x, w_t[0]).float() - ref).norm() / ref.norm()).item()
                ms = graph_ms(lambda w: torch.mm(x, w), w_t)
                row["configs"].append({"config": "cublas:x@w_t", "ms": ms, "rel_err": err})
                del w_t
            if args.flashinfer:
                for c in flashinfer_rows(x, weights, ref):
                    row["configs"].append(c)
                    print(f"    {c['config']:>20} {c['ms'] * 1e3:7.1f} us (cublas {base * 1e3:.1f})", flush=True)
            results["rows"].append(row)
            floor = 2 * n * k / 3.0e12 * 1e3
            line = (f"{name:>12} M={m:<5} cublas {base * 1e3:7.1f} us ({2 * m * n * k / base / 1e9:5.0f} TFLOP/s)  "
                    f"weight floor {floor * 1e3:.1f} us")
            if row["configs"]:
                best = min(row["configs"], key=lambda c: c["ms"])
                line += (f"  best other {best['ms'] * 1e3:7.1f} us ({base / best['ms']:.2f}x, {best['config']}, "
                         f"err {best['rel_err']:.1e})")
            print(line, flush=True)
            del weights
            torch.cuda.empty_cache()
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
