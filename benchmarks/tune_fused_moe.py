"""Tune the `triton` MoE dispatcher's block configurations for one expert shape on this GPU.

For each batch size, every candidate config (GEMV form while the pairs are few, grouped-GEMM tiles
otherwise) runs the expert computation (bf16, random routing) from one CUDA graph rotating over
weight copies beyond L2 (jackfield.bench.common.replay_ms); the fastest config whose output matches
the default config's within bf16 noise wins. The table is written where the dispatcher reads it,
`plugins/moe/configs/E=..,H=..,I=..,device=<GPU>.json`, plus a copy of all timings to --out.

    python benchmarks/tune_fused_moe.py --shape qwen3-30b-a3b --out benchmarks/results/tune-moe.json
        [--batches 1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

from jackfield.bench.common import provenance, replay_ms
from jackfield.sdk import route
from jackfield_plugins.moe.triton_kernels import fused_experts
from jackfield_plugins.moe.triton_kernels.configs import CONFIG_DIR, config_file_name, default_config, device_name

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from moe_kernels import COLD_BYTES, MAX_COPIES, SHAPES  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def candidates(pairs: int, quick: bool) -> list[dict]:
    out = []
    if pairs <= 128:
        for bn, bk, bn2, warps, split in itertools.product((16, 32, 64), (128, 256), (8, 16, 32), (4, 8),
                                                           (False, True)):
            if quick and (warps == 8 or bn2 == 8):
                continue
            out.append({"path": "gemv", "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_N2": bn2, "BLOCK_K2": bk, "SPLIT2": split,
                        "num_warps": warps, "num_stages": 2})
    if pairs >= 16:
        for bm, bn, bk, group, warps, stages in itertools.product((16, 32, 64, 128), (64, 128), (64, 128),
                                                                 (1, 8), (4, 8), (3, 4)):
            if bm * bn >= 128 * 128 and warps == 4 or bk == 128 and stages == 4:
                continue
            if quick and (group == 8 and bm <= 32 or stages == 4):
                continue
            out.append({"path": "gemm", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group,
                        "num_warps": warps, "num_stages": stages})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen3-30b-a3b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--out", required=True, help="all timings (JSON)")
    ap.add_argument("--quick", action="store_true", help="a smaller candidate set (about a third)")
    args = ap.parse_args()
    e, k, h, i, routing = SHAPES[args.shape]
    copies = max(2, min(MAX_COPIES, -(-COLD_BYTES // (3 * e * h * i * 2))))
    gen = torch.Generator(device="cuda").manual_seed(0)
    weights = [((torch.randn(e, 2 * i, h, device="cuda", generator=gen) * 0.05).bfloat16(),
                (torch.randn(e, h, i, device="cuda", generator=gen) * 0.05).bfloat16()) for _ in range(copies)]
    table, timings = {}, []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, h, device="cuda", generator=gen).bfloat16()
        tw, ti = route(torch.randn(batch, e, device="cuda", generator=gen), routing)
        ref = fused_experts(x, *weights[0], tw, ti, default_config(batch, e, k)).float()
        best = None
        for cfg in candidates(batch * k, args.quick):
            try:
                out = fused_experts(x, *weights[0], tw, ti, cfg).float()
                if (out - ref).norm() / ref.norm() > 2e-2:
                    raise ValueError("output differs from the default config's")
                ms = replay_ms([lambda w=w, c=cfg: fused_experts(x, *w, tw, ti, c) for w in weights], reps=5)
            except Exception as exc:  # a config the compiler or the device rejects
                timings.append({"batch": batch, "config": cfg, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            timings.append({"batch": batch, "config": cfg, "us": ms * 1e3})
            if best is None or ms < best[0]:
                best = (ms, cfg)
        if best is None:
            print(f"batch {batch}: no candidate ran; keeping the default")
            continue
        table[batch] = best[1]
        print(f"batch {batch:>5}: {best[0] * 1e3:8.1f} us  {best[1]}", flush=True)
    path = CONFIG_DIR / config_file_name(e, h, i, device_name(torch.device("cuda")))
    path.write_text(json.dumps({str(b): c for b, c in sorted(table.items())}, indent=1) + "\n")
    with open(args.out, "w") as f:
        json.dump({**provenance("python3 benchmarks/tune_fused_moe.py " + " ".join(sys.argv[1:])),
                   "device": torch.cuda.get_device_name(), "shape": args.shape, "table": table,
                   "timings": timings}, f, indent=1)
    print(f"wrote {path} and {args.out}")


if __name__ == "__main__":
    main()
