"""Decode LoRA kernels per Llama-3.1-8B linear shape: the base GEMM alone, then with the `triton`
backend's per-token BGMV update and with its slot-grouped segment kernels (tiles of 16 tokens of one
adapter), at several batch sizes and adapter counts (token i on adapter i % N). Each measurement
replays one CUDA graph over LAYERS copies of the weights (base and adapters), so weights come
from DRAM as in a decode step; a step's cost is the per-layer time x 32 over the four shapes.

    python3 benchmarks/studies/lora_decode_kernels.py [--batch-sizes 1 16 64 256] [--adapters 1 8 64]

Also checks that the two paths agree (relative to the update's size) on every configuration.
"""
from __future__ import annotations

import argparse
import sys

import torch
from jackfield.bench.common import replay_ms, write_report
from jackfield.sdk import LoRAWeights, lora_batch
from jackfield_plugins.lora import bgmv, sgmv

HIDDEN, INTER, KV = 4096, 14336, 1024
SHAPES = {"qkv": (HIDDEN, ((0, HIDDEN), (HIDDEN, KV), (HIDDEN + KV, KV))), "o": (HIDDEN, ((0, HIDDEN),)),
          "gate_up": (HIDDEN, ((0, INTER), (INTER, INTER))), "down": (INTER, ((0, HIDDEN),))}


def weights(k: int, slices, slots: int, rank: int, dtype) -> LoRAWeights:
    n, out_f = len(slices), sum(s for _, s in slices)
    a = torch.randn(slots, n * rank, k, device="cuda", dtype=dtype) / k ** 0.5
    b = torch.randn(slots, out_f, rank, device="cuda", dtype=dtype) / rank ** 0.5
    ranks = torch.full((slots, n), rank, dtype=torch.int32, device="cuda")
    return LoRAWeights(a=a, b=b, ranks=ranks, slices=tuple(slices), max_rank=rank)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dtype, rows = torch.bfloat16, []
    for name, (k, slices) in SHAPES.items():
        n_out = sum(s for _, s in slices)
        base_w = [torch.randn(n_out, k, device="cuda", dtype=dtype) / k ** 0.5 for _ in range(args.layers)]
        for adapters in args.adapters:
            lw = [weights(k, slices, adapters, args.rank, dtype) for _ in range(args.layers)]
            scalings = torch.ones(adapters, dtype=torch.float32, device="cuda")
            for bs in args.batch_sizes:
                slots = [i % adapters for i in range(bs)]
                x = torch.randn(bs, k, device="cuda", dtype=dtype)
                out = torch.empty(bs, n_out, device="cuda", dtype=dtype)
                per_token = lora_batch([1] * bs, slots, scalings, decode=True)
                tiled = lora_batch([1] * bs, slots, scalings, decode=True, tile=16)

                def base(w):
                    return lambda: torch.mm(x, w.t(), out=out)

                def with_update(w, lw_i, kind):
                    def call():
                        torch.mm(x, w.t(), out=out)
                        if kind == "bgmv":
                            bgmv.decode(x, lw_i, out, per_token)
                        else:
                            sgmv.grouped(x, lw_i, out, tiled)
                    return call

                row = {"shape": name, "adapters": adapters, "batch_size": bs,
                       "base_us": 1e3 * replay_ms([base(w) for w in base_w])}
                for kind in ("bgmv", "grouped"):
                    row[f"{kind}_us"] = 1e3 * replay_ms([with_update(w, l, kind) for w, l in zip(base_w, lw)])
                ref = torch.mm(x, base_w[0].t())
                got = {}
                for kind in ("bgmv", "grouped"):
                    o = ref.clone()
                    (bgmv.decode(x, lw[0], o, per_token) if kind == "bgmv" else sgmv.grouped(x, lw[0], o, tiled))
                    got[kind] = o.float() - ref.float()
                row["grouped_vs_bgmv"] = ((got["grouped"] - got["bgmv"]).norm() / got["bgmv"].norm()).item()
                rows.append(row)
                print(f"{name:8s} adapters {adapters:3d} bs {bs:4d}: base {row['base_us']:8.1f} us, "
                      f"+bgmv {row['bgmv_us'] - row['base_us']:7.1f}, +grouped {row['grouped_us'] - row['base_us']:7.1f}"
                      f"  (diff {row['grouped_vs_bgmv']:.1e})", file=sys.stderr, flush=True)
            del lw
    steps = {}
    for r in rows:
        key = (r["adapters"], r["batch_size"])
        acc = steps.setdefault(key, {"base_ms": 0.0, "bgmv_ms": 0.0, "grouped_ms": 0.0})
        for kind in ("base", "bgmv", "grouped"):
            acc[f"{kind}_ms"] += 32 * r[f"{kind}_us"] / 1e3
    for (adapters, bs), acc in sorted(steps.items()):
        print(f"step (32 layers x 4 linears) adapters {adapters:3d} bs {bs:4d}: base {acc['base_ms']:.2f} ms, "
              f"bgmv {acc['bgmv_ms']:.2f} ({acc['bgmv_ms'] / acc['base_ms']:.3f}x), grouped {acc['grouped_ms']:.2f} "
              f"({acc['grouped_ms'] / acc['base_ms']:.3f}x)", file=sys.stderr)
    write_report(args.out, "benchmarks/studies/lora_decode_kernels.py " + " ".join(sys.argv[1:]),
                 {"rows": rows, "steps": [{"adapters": a, "batch_size": b, **v} for (a, b), v in sorted(steps.items())]},
                 echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
