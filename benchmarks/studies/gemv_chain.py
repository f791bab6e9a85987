"""Batch-1 decode linear layers back to back, as a decode step of the Llama-3.1-8B shape runs them:
the Triton GEMVs launched plainly and as programmatic dependent launches (PDL), and cuBLAS with the
unfused RMSNorm and SiLU-and-mul kernels. Each layer is

    qkv = RMSNorm(x + r) W_qkv  ->  a torch kernel standing in for rope + attention  ->  o = . W_o
    ->  gate_up = RMSNorm(o + r) W_gu  ->  x = silu_mul(gate_up) W_down

with its own weights (13.96 GB for 32 layers, so every weight comes from DRAM), captured in one CUDA
graph and replayed; bandwidth is weight bytes over replay time. Configurations are chosen by the
engine's own `GemvTuner` (per shape, against cuBLAS).

    python3 benchmarks/studies/gemv_chain.py [--layers 32] [--rows 1 2 4 8 16] [--out results.json]

--rows adds cuBLAS alone at more rows of x (small decode batches: each weight still read once);
--log-candidates prints the tuner's time for every candidate configuration of every shape.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from jackfield.bench.common import provenance, replay_ms
from jackfield.kernels import gemv as k, pdl_available
from jackfield.kernels.activation import silu_and_mul
from jackfield.kernels.norm import rmsnorm
from jackfield.sdk import Gemv


def make_layers(n: int, hidden: int, qkv: int, inter: int, dtype) -> list[tuple]:
    def w(rows, cols):
        return torch.randn(rows, cols, device="cuda", dtype=dtype) / cols ** 0.5
    return [(torch.empty(hidden, device="cuda", dtype=dtype).uniform_(0.5, 1.5), w(qkv, hidden), w(hidden, hidden),
             w(2 * inter, hidden), w(hidden, inter)) for _ in range(n)]


def choose(layer, x, res) -> list:
    """The engine's choice for the four linears, through the SDK's `Gemv` as a decode step meets
    them: a GemvConfig, or None (cuBLAS and the unfused norm or activation kernel)."""
    g, w_qkv, w_o, w_gu, w_d = layer
    h = torch.randn(1, 2 * w_d.shape[1], device=x.device, dtype=x.dtype)
    gemv = Gemv()
    gemv.normed_linear(x, res, g, 1e-5, w_qkv)
    gemv.linear(x, w_o)
    gemv.normed_linear(x, res, g, 1e-5, w_gu)
    gemv.silu_mul_linear(h, w_d)
    keys = [("add_rmsnorm_linear", w_qkv), ("linear", w_o), ("add_rmsnorm_linear", w_gu), ("silu_mul_linear", w_d)]
    return [gemv.choices[(variant, *w.shape, w.dtype)] for variant, w in keys]


def normed(x, res, g, w, cfg):
    """RMSNorm(x + res) W^T and x + res: fused GEMV with cfg, else the norm kernel and cuBLAS."""
    if cfg is not None:
        return k.gemv_rmsnorm(x, res, g, 1e-5, w, None, cfg)
    h, res = rmsnorm(x, g, 1e-5, res)
    return F.linear(h, w), res


def step(x, res, layers, cfgs, hidden: int):
    """One decode step's linear layers; cfgs None: everything through cuBLAS and the unfused kernels."""
    c = cfgs or [None] * 4
    for g, w_qkv, w_o, w_gu, w_d in layers:
        qkv, res = normed(x, res, g, w_qkv, c[0])
        a = qkv[:, :hidden] * 1.0
        o = k.gemv(a, w_o, None, c[1]) if c[1] else F.linear(a, w_o)
        h, res = normed(o, res, g, w_gu, c[2])
        x = k.gemv_silu_mul(h, w_d, None, c[3]) if c[3] else F.linear(silu_and_mul(h), w_d)
    return x, res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--qkv", type=int, default=6144)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rows", type=int, nargs="+", default=[1], help="also time cuBLAS at these rows of x")
    p.add_argument("--log-candidates", action="store_true", help="the tuner's per-candidate times, on stderr")
    p.add_argument("--out")
    args = p.parse_args()
    if args.log_candidates:
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
        logging.getLogger("jackfield.kernels.gemv").setLevel(logging.DEBUG)
    dt = torch.bfloat16
    torch.manual_seed(0)
    layers = make_layers(args.layers, args.hidden, args.qkv, args.intermediate, dt)
    x, res = torch.randn(1, args.hidden, device="cuda", dtype=dt), torch.randn(1, args.hidden, device="cuda", dtype=dt)
    chosen = choose(layers[0], x, res)  # launched with PDL where the GPU has it (GemvConfig.pdl)
    plain = [replace(c, pdl=False) if c else None for c in chosen]
    variants = [("cublas_unfused", None), ("triton_gemv", plain)]
    if pdl_available(torch.device("cuda")):
        variants.append(("triton_gemv_pdl", chosen))
    gbytes = sum(t.numel() * t.element_size() for layer in layers for t in layer[1:]) / 1e9
    rows = {}
    for name, cfgs in variants:
        ms = replay_ms([lambda c=cfgs: step(x, res, layers, c, args.hidden)], reps=args.reps)
        rows[name] = {"ms": round(ms, 4), "tb_per_s": round(gbytes / ms, 3)}
        print(f"{name:>16}: {ms:.3f} ms per step, {gbytes / ms:.3f} TB/s of weights", file=sys.stderr)
    cublas_rows = {}
    for m in (m for m in args.rows if m > 1):
        xm, rm = torch.randn(m, args.hidden, device="cuda", dtype=dt), torch.randn(m, args.hidden, device="cuda", dtype=dt)
        ms = replay_ms([lambda: step(xm, rm, layers, None, args.hidden)], reps=args.reps)
        cublas_rows[str(m)] = {"ms": round(ms, 4), "tb_per_s": round(gbytes / ms, 3)}
        print(f"cublas_unfused at {m} rows: {ms:.3f} ms per step, {gbytes / ms:.3f} TB/s of weights", file=sys.stderr)
    report = {**provenance("python3 benchmarks/studies/gemv_chain.py " + " ".join(sys.argv[1:])),
              "metrics": {"layers": args.layers, "weight_gb": round(gbytes, 3),
                          "pdl_supported": pdl_available(torch.device("cuda")),
                          "configs": [str(c) for c in chosen], **rows, "cublas_unfused_rows": cublas_rows}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
