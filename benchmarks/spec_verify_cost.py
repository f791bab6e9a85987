"""What one speculative verify forward costs against one plain decode step (GPU, device time).

  python3 benchmarks/spec_verify_cost.py --model benchmarks/configs/llama-3.1-8b.json --load-format dummy \\
      --attention-backend triton [--batch-sizes 1,16] [--draft-tokens 4,8,16] [--context 1024] [--out FILE]

For each batch size, requests hold `--context` cached tokens. The plain step is the engine's captured
decode CUDA graph; a verify forward of n tokens per request (a TARGET_VERIFY batch with a draft-tree
mask: a binary tree) is captured in a CUDA graph of its own (model forward + logits of every token),
with the attention metadata the engine's verify graphs capture, and replayed. Both are median
device milliseconds of back-to-back replays. The ratio verify / decode
bounds the speedup a drafter can give: with accepted length a, the best case is a / ratio.
`--kernels N` adds the N kernels that take most device time in each (torch.profiler; decode: its graph).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from jackfield.bench.common import graph_ms, provenance, replay_ms
from jackfield.cli.settings_args import add_settings_arguments, cli_overrides
from jackfield.config import load_settings
from jackfield.mem.device_copy import to_device
from jackfield.model_runner import ModelRunner
from jackfield.runtime_setup import setup_runtime
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.spec.tree import VerifyTrees


def decode_ms(runner, rows: list[int], context: int, reps: int = 50) -> float:
    """The captured decode graph of len(rows), its static inputs set to these rows at `context` + 1."""
    dev, bs = runner.device, len(rows)
    table = runner.req_to_token_pool.req_to_token
    slots = runner.allocator.alloc(bs * (context + 1))
    for i, row in enumerate(rows):
        table[row, :context + 1] = slots[i * (context + 1):(i + 1) * (context + 1)].to(torch.int32)
    fb = ForwardBatch(
        mode=ForwardMode.DECODE, batch_size=bs, input_ids=torch.ones(bs, dtype=torch.int64, device=dev),
        positions=torch.full((bs,), context, dtype=torch.int64, device=dev), req_pool_indices=to_device(rows, torch.int64, dev),
        seq_lens=torch.full((bs,), context + 1, dtype=torch.int32, device=dev),
        out_cache_loc=slots.view(bs, context + 1)[:, -1].contiguous(), req_to_token=table, kv_pool=runner.kv_pool,
        attn_backend=runner.attn_backend, seq_lens_cpu=(context + 1,) * bs)
    runner.graph_runner.replay(fb)
    ms = graph_ms(runner.graph_runner.graphs[bs], reps)
    for row in rows:
        runner.allocator.free(table[row, :context + 1].long())
    return ms


def verify_batch(runner, rows: list[int], context: int, n: int) -> ForwardBatch:
    dev = runner.device
    trees = VerifyTrees([[1] * n for _ in rows], [[-1] + [(j - 1) // 2 for j in range(1, n)] for _ in rows])
    table = runner.req_to_token_pool.req_to_token
    slots = runner.allocator.alloc(len(rows) * (context + n))
    for i, row in enumerate(rows):
        table[row, :context + n] = slots[i * (context + n):(i + 1) * (context + n)].to(torch.int32)
    loc = torch.cat([slots[i * (context + n) + context:(i + 1) * (context + n)] for i in range(len(rows))])
    depths = trees.depths()
    mask, indptr = trees.mask(dev)
    ext = to_device([n] * len(rows), torch.int32, dev)
    return ForwardBatch(
        mode=ForwardMode.TARGET_VERIFY, batch_size=len(rows), input_ids=torch.ones(len(rows) * n, dtype=torch.int64,
                                                                                   device=dev),
        positions=to_device([context + d for ds in depths for d in ds], torch.int64, dev),
        req_pool_indices=to_device(rows, torch.int64, dev), seq_lens=to_device([context + n] * len(rows), torch.int32, dev),
        out_cache_loc=loc, req_to_token=table, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
        seq_lens_cpu=(context + n,) * len(rows), extend_prefix_lens=to_device([context] * len(rows), torch.int32, dev),
        extend_seq_lens=ext, extend_start_loc=torch.arange(len(rows), device=dev, dtype=torch.int32) * n,
        extend_prefix_lens_cpu=(context,) * len(rows), extend_seq_lens_cpu=(n,) * len(rows),
        logits_indices=torch.arange(len(rows) * n, device=dev), tree_mask=mask, tree_mask_indptr=indptr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--draft-tokens", default="4,8,16", help="tokens per request in the verify forward")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--out", default=None)
    p.add_argument("--kernels", type=int, default=0, help="list this many kernels per decode and verify forward")
    add_settings_arguments(p)
    args = p.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    overrides = {"max_running_requests": max(sizes) + 1, "cuda_graph_max_bs": max(sizes), **cli_overrides(args)}
    runner = ModelRunner(setup_runtime(load_settings(args.config_file, overrides).settings), progress=False)
    if runner.graph_runner is None:
        print("needs CUDA graphs (a CUDA device and a backend that captures decode)", file=sys.stderr)
        return 2
    results = []
    with torch.inference_mode():
        for bs in sizes:
            rows = [runner.req_to_token_pool.alloc() for _ in range(bs)]
            plain = decode_ms(runner, rows, args.context)
            if args.kernels:
                from profile_decode import kernel_breakdown

                results.append({"batch_size": bs, "decode_kernels": kernel_breakdown(
                    runner.graph_runner.graphs[bs].replay, 10, top=args.kernels)["kernels"]})
            for n in [int(x) for x in args.draft_tokens.split(",")]:
                fb = verify_batch(runner, rows, args.context, n)
                runner.attn_backend.init_forward_metadata_capture(fb)  # as the engine's verify graphs capture it

                def forward(fb=fb):
                    return runner.model.compute_logits(runner.model(fb.input_ids, fb.positions, fb))

                verify = replay_ms([forward])
                results.append({"batch_size": bs, "tokens_per_request": n, "decode_ms": round(plain, 3),
                                "verify_ms": round(verify, 3), "ratio": round(verify / plain, 3)})
                if args.kernels:
                    results[-1]["verify_kernels"] = kernel_breakdown(forward, 10, top=args.kernels)["kernels"]
                print(results[-1], file=sys.stderr)
                for row in rows:
                    runner.allocator.free(runner.req_to_token_pool.req_to_token[row, :args.context + n].long())
            for row in rows:
                runner.req_to_token_pool.free(row)
    report = {**provenance(" ".join(sys.argv)), "context": args.context, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
