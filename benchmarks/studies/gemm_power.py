"""How fast the prefill GEMMs can run for long: cuBLAS at 16,384 rows on the 8B shapes, cold and at
the board's power limit.

A prefill chunk keeps the tensor cores busy for hundreds of milliseconds. This times each linear
layer of a 16,384-token chunk from a cool start (3 calls) and then after the device has run GEMMs
long enough to hold its power limit, with the SM clock and power draw (NVML) read after each. The
sustained part interleaves the shapes in rounds, and splits of gate_up and down (by output columns or
by rows), so that every case sees the same thermal state.

    python3 benchmarks/studies/gemm_power.py --out gemm-power.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: attention_kernels
from attention_kernels import save_rows
from llama8b_shapes import LINEAR_SHAPES

ROWS = 16384


def linear_layers(rows: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, weight) of each 8B linear layer at `rows` tokens, random bf16."""
    def t(*shape):
        return torch.randn(*shape, dtype=torch.bfloat16, device="cuda") * 0.02

    inputs = {k: t(rows, k) for k in sorted({k for _, k in LINEAR_SHAPES.values()})}
    return {name: (inputs[k], t(n, k)) for name, (n, k) in LINEAR_SHAPES.items()}


def cases() -> dict:
    """name -> (call, FLOPs): each layer at ROWS rows, then splits of gate_up and down."""
    layers = linear_layers(ROWS)
    out = {name: (lambda x=x, w=w: F.linear(x, w), 2 * x.shape[0] * w.shape[0] * w.shape[1])
           for name, (x, w) in layers.items()}
    (x, gate_up), (h, down) = layers["gate_up_proj"], layers["down_proj"]
    cols, rows = gate_up.shape[0] // 2, ROWS // 2
    out["gate_up_proj as 2 column halves"] = (lambda: (F.linear(x, gate_up[:cols]), F.linear(x, gate_up[cols:])),
                                              out["gate_up_proj"][1])
    out["gate_up_proj as 2 row halves"] = (lambda: (F.linear(x[:rows], gate_up), F.linear(x[rows:], gate_up)),
                                           out["gate_up_proj"][1])
    out["down_proj as 2 row halves"] = (lambda: (F.linear(h[:rows], down), F.linear(h[rows:], down)),
                                        out["down_proj"][1])
    return out


def tflops(fn, flops: float, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return flops / (start.elapsed_time(end) / reps) / 1e9


def board() -> dict:
    """SM clock (MHz) and power draw (W) now, where NVML answers."""
    try:
        return {"sm_clock_mhz": torch.cuda.clock_rate(), "power_w": torch.cuda.power_draw() / 1000}
    except Exception as exc:  # noqa: BLE001 - NVML is optional: the timing stands without it
        return {"nvml": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out")
    args = p.parse_args()
    work = cases()
    for fn, _ in work.values():
        fn()
    rows = []
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        torch.cuda.synchronize()
        time.sleep(1.0)  # cool down between the cold points
        fn, flops = work[name]
        rows.append({"case": name, "state": "cold (3 calls after 1 s idle)", "tflops": tflops(fn, flops, 3), **board()})
    heat, _ = work["gate_up_proj"]
    for _ in range(200):  # about a second of GEMMs: the board reaches its power limit
        heat()
    sustained = {name: [] for name in work}
    for _ in range(args.rounds):
        for name, (fn, flops) in work.items():
            sustained[name].append((tflops(fn, flops, 15), board()))
    for name, points in sustained.items():
        points.sort(key=lambda pt: pt[0])
        value, at = points[len(points) // 2]
        rows.append({"case": name, "state": f"sustained (median of {args.rounds} interleaved rounds)",
                     "tflops": value, "min_tflops": points[0][0], "max_tflops": points[-1][0], **at})
    for r in rows:
        extra = "  ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k in ("sm_clock_mhz", "power_w", "nvml"))
        print(f"{r['case']:<34} {r['state']:<44} {r['tflops']:6.0f} TFLOP/s  {extra}")
    save_rows(args.out, "studies/gemm_power.py", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
