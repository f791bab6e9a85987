"""INT4 (group 128) matmuls of the Llama-3.1-8B linear shapes by rows of x: PyTorch's tinygemm
(`aten._weight_int4pack_mm`, its own layout), the Triton GEMM (internal layout), and the Triton
dequantize kernel + cuBLAS reading either layout (int4_tinygemm.py). It says up to how many rows
tinygemm wins (int4_tinygemm.ROWS), where dequantize + cuBLAS overtakes the GEMM, and what reading
tinygemm's layout costs the dequantize kernel. Calls replayed from one CUDA graph, each on its own copy of the weight (DRAM).

    python3 benchmarks/studies/int4_tinygemm.py [--rows 1,2,4,8,16,32,64,256] [--out results.json]
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from jackfield.bench.common import replay_ms, write_report
from llama8b_shapes import LINEAR_SHAPES
from quant_gemm import copies_for


def measure(n: int, k: int, rows: list[int]) -> list[dict]:
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant import int4_tinygemm as tinygemm

    w = torch.randn(n, k, device="cuda") * 0.02
    q, s, z = int4.quantize(w, 128)
    s16, z16 = s.half(), z.half()
    layouts = {"internal": int4.pack(q, 1), "tinygemm": tinygemm.pack_on_device(q)}
    table = tinygemm.scale_table(s16, z16)
    copies = copies_for(q.numel() // 2)
    reps = {name: [t.clone() for _ in range(copies)] for name, t in layouts.items()}
    out = []
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        paths = {
            "tinygemm": [lambda t=t: tinygemm.matmul(x, t, 128, table) for t in reps["tinygemm"]],
            "triton_mm/internal": [lambda t=t: k4.int4_matmul(x, t, s16, z16, 128, None) for t in reps["internal"]],
            **{f"dequant_cublas/{name}": [lambda t=t: F.linear(x, k4.int4_dequantize(t, s16, z16, 128, x.dtype))
                                          for t in reps[name]] for name in layouts},
        }
        for path, calls in paths.items():
            us = replay_ms(calls) * 1e3
            out.append({"rows": m, "path": path, "us": us, "code_gb_per_s": q.numel() / 2 / us / 1e3})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32,64,256")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    results = {}
    for name, (n, k) in LINEAR_SHAPES.items():
        results[name] = measure(n, k, rows)
        for m in rows:
            cells = " ".join(f"{r['path']} {r['us']:.1f}" for r in results[name] if r["rows"] == m)
            print(f"{name} {n}x{k} rows {m}: {cells}", flush=True)
    command = "python3 benchmarks/studies/int4_tinygemm.py " + " ".join(sys.argv[1:])
    write_report(args.out, command, {"shapes": results}, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
