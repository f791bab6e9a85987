"""All-reduce latency between the GPUs of one node (NCCL), eager and replayed from a CUDA graph, at
the sizes a tensor-parallel decode step all-reduces: [batch, hidden] bf16, twice per layer.

    python3 benchmarks/allreduce_latency.py --world 2 --hidden 4096 --layers 32 --out result.json

Prints per size the microseconds of one all-reduce and the all-reduce time per decoded token
(2 x layers all-reduces), the part of a TP decode step that is communication.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _time(fn, iters: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def _worker(rank: int, args, port: int, out: dict) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world,
                            device_id=torch.device("cuda", rank))
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, args.hidden, dtype=torch.bfloat16, device="cuda")
        for _ in range(10):
            dist.all_reduce(x)
        eager = _time(lambda: dist.all_reduce(x), args.iters)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            dist.all_reduce(x)
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(2 * args.layers):  # one decode step's all-reduces
                    dist.all_reduce(x)
        torch.cuda.current_stream().wait_stream(stream)
        step = _time(graph.replay, max(1, args.iters // (2 * args.layers)))
        rows.append({"batch": batch, "bytes": x.numel() * 2, "eager_us": eager * 1e6,
                     "graph_us_per_allreduce": step / (2 * args.layers) * 1e6, "graph_ms_per_token": step * 1e3})
    if rank == 0:
        out["rows"] = rows
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--out")
    args = p.parse_args()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(args, 29500 + os.getpid() % 1000, out), nprocs=args.world)
        result = {"world": args.world, "hidden": args.hidden, "layers": args.layers, "gpu": torch.cuda.get_device_name(),
                  "rows": list(out["rows"])}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
