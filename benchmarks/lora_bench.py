"""Multi-LoRA benchmarks: what serving adapters costs against the base model (JSON report).

    python benchmarks/lora_bench.py latency [--adapters N ...] [--rank R] [--batch-size 1 16] [settings…]
    python benchmarks/lora_bench.py offline [--adapters N[:SLOTS] ...] [--rank R] [--num-prompts 256] [settings…]

Each `--adapters` entry is one run, in order, in this process (one engine per run, freed before the
next): `0` is the base model with LoRA off (the reference); `N` writes N random rank-R adapters on
every linear layer (q/k/v/o/gate/up/down; one safetensors file shared by symlink, each adapter its
own config) and serves them with LoRA on; `N:SLOTS` also sets `--max-loras` to SLOTS for that run
(fewer slots than adapters: swaps); a trailing `@BACKEND` sets that run's LoRA backend
(`1@torch_native`). `latency` runs one static batch, every request on the first adapter, and reports
prefill time and decode tok/s (`jackfield bench latency`'s measurement). `offline` submits every
request at once, request i on adapter i % N, and reports throughput and how many times adapters
were copied into device slots. Every run also reports its engine build time,
and its ratio to the base run when there is one. A summary line per run goes to stderr. Other
arguments are jackfield settings (`--model`, `--load-format dummy`, `--max-loras`,
`--max-loras-per-batch`, `--lora-backend`, …).

    benchmarks/gpu_suite.sh lora   # the H100 runs: 8B batch-1 decode, offline over 8 / 64 adapters, swapping
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapters(hf_config: dict, rank: int, count: int, root: Path, seed: int = 0) -> list[str]:
    """`count` PEFT directories under `root` sharing one random rank-`rank` weights file; returns
    lora_paths entries (name=path)."""
    from safetensors.torch import save_file

    hidden, inter = hf_config["hidden_size"], hf_config["intermediate_size"]
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, hf_config.get("num_key_value_heads", heads) * head_dim
    shapes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(hf_config["num_hidden_layers"]):
        for module in TARGETS:
            part = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{part}.{module}"
            n_in, n_out = shapes[module]
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, n_in, generator=g) / n_in ** 0.5).bfloat16()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(n_out, rank, generator=g) * 0.01).bfloat16()
    shared = root / "adapter_model.safetensors"
    save_file(tensors, str(shared))
    entries = []
    for i in range(count):
        d = root / f"lora{i}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                           "target_modules": list(TARGETS), "bias": "none"}))
        os.symlink(shared, d / "adapter_model.safetensors")
        entries.append(f"lora{i}={d}")
    return entries


def build(args, extra: dict):
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    overrides = {**cli_overrides(args), **extra}
    overrides.setdefault("disable_radix_cache", True)
    settings = load_settings(args.config_file, overrides).settings
    return build_scheduler(settings, progress=False)


def parse_run(entry: str) -> tuple[int, int | None, str | None]:
    """`N[:SLOTS][@BACKEND]` -> (adapters, max_loras or None, LoRA backend or None)."""
    head, _, backend = entry.partition("@")
    count, _, slots = head.partition(":")
    try:
        return int(count), (int(slots) if slots else None), (backend or None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--adapters entry '{entry}' is not N[:SLOTS][@BACKEND]") from None


def measure_latency(sched, args, names, input_len: int, output_len: int) -> dict:
    from jackfield.bench.common import random_prompts, run_requests

    vocab, rows = sched.runner.config.vocab_size, []
    for bs in args.batch_size:
        # warm-up at the measured shapes: the prefill's Triton kernels compile here, not in the timing
        run_requests(sched, random_prompts(bs, input_len, vocab, 1), 4, prefix="warm", loras=[names[0]] * bs)
        res = run_requests(sched, random_prompts(bs, input_len, vocab, 0), output_len, loras=[names[0]] * bs)
        decode_s = res.total_s - res.first_token_s
        decode_tokens = sum(len(v) for v in res.outputs.values()) - bs
        rows.append({"batch_size": bs, "prefill_s": res.first_token_s, "decode_s": decode_s,
                     "decode_tok_per_s": decode_tokens / decode_s if decode_s else None, "total_s": res.total_s})
    return {"results": rows}


def measure_offline(sched, args, names, input_len: int, output_len: int) -> dict:
    from jackfield.bench.common import random_prompts, run_requests

    vocab, n = sched.runner.config.vocab_size, args.num_prompts
    pool = sched.runner.lora.pool if sched.runner.lora is not None else None
    loras = [names[i % len(names)] for i in range(n)]
    # warm-up at the measured prompt length, every slot's kernels compiled before the timing
    warm = min(n, 16)
    run_requests(sched, random_prompts(warm, input_len, vocab, 99), 8, prefix="warm", loras=loras[:warm])
    loads = pool.loads if pool is not None else 0
    res = run_requests(sched, random_prompts(n, input_len, vocab, 0), output_len, loras=loras)
    out_tokens = sum(len(v) for v in res.outputs.values())
    decode_steps = [(t, tokens) for t, prefill, tokens in res.step_times if not prefill]
    return {"num_prompts": n, "total_s": res.total_s, "output_tok_per_s": out_tokens / res.total_s,
            "all_first_tokens_s": res.first_token_s, "decode_only_steps": len(decode_steps),
            "decode_only_steps_s": sum(t for t, _ in decode_steps),
            # requests decoding at once (fewer slots than adapters bound it)
            "mean_decode_batch": sum(n for _, n in decode_steps) / max(len(decode_steps), 1),
            "total_tok_per_s": (out_tokens + n * input_len) / res.total_s, "forward_steps": len(res.step_times),
            "retractions": sched.stats.retractions,
            "adapter_slot_loads": (pool.loads - loads) if pool is not None else 0}


def one_run(args, count: int, slots: int | None, backend: str | None, input_len: int, output_len: int,
            tmp: Path) -> dict:
    from jackfield.bench.common import attention_name
    from jackfield.loader.source import resolve_model

    extra = {}
    if count:
        root = tmp / f"run{count}-{slots}-{backend}"
        root.mkdir()
        hf_config = resolve_model(args.model, args.load_format or "auto").hf_config
        extra["lora_paths"] = write_adapters(hf_config, args.rank, count, root)
        extra.setdefault("max_lora_rank", args.rank)
        if slots:
            extra["max_loras"] = slots
        if backend:
            extra["lora_backend"] = backend
    if args.mode == "latency":
        longest = input_len * max(args.batch_size)
        extra.update(chunked_prefill_size=max(longest, 2048), max_prefill_tokens=max(longest, 16384))
    t0 = time.perf_counter()
    sched, info = build(args, extra)
    names = [f"lora{i}" for i in range(count)] or [None]
    run = {"adapters": count, "build_s": time.perf_counter() - t0, "model": info.model_path, "device": info.device,
           "dtype": info.dtype, "attention_backend": attention_name(info.components),
           "lora_backend": info.components["lora"]["name"] if count else None, "rank": args.rank if count else None,
           "max_loras": info.settings.max_loras if count else None, "input_len": input_len,
           "output_len": output_len, "cuda_graphs": sched.runner.graph_runner is not None}
    try:
        measure = measure_latency if args.mode == "latency" else measure_offline
        run.update(measure(sched, args, names, input_len, output_len))
    finally:
        sched.close()
        del sched
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            run["cuda_allocated_after_gb"] = torch.cuda.memory_allocated() / 1e9
    return run


def summary(run: dict, base: dict | None) -> str:
    what = f"adapters={run['adapters']}" + (f" slots={run['max_loras']} {run['lora_backend']}" if run["adapters"]
                                            else " (LoRA off)")
    if "results" in run:
        parts = []
        for i, row in enumerate(run["results"]):
            ratio = ""
            if base is not None and base is not run and row["decode_tok_per_s"]:
                ratio = f" ({row['decode_tok_per_s'] / base['results'][i]['decode_tok_per_s']:.3f}x base)"
            parts.append(f"bs{row['batch_size']}: {row['decode_tok_per_s']:.1f} tok/s decode{ratio}, "
                         f"prefill {row['prefill_s'] * 1e3:.0f} ms")
        body = "; ".join(parts)
    else:
        ratio = f" ({run['output_tok_per_s'] / base['output_tok_per_s']:.3f}x base)" if base and base is not run else ""
        body = (f"{run['output_tok_per_s']:.0f} out tok/s{ratio}, {run['total_s']:.2f} s (every first token "
                f"{run['all_first_tokens_s']:.2f} s, {run['decode_only_steps']} decode-only steps "
                f"{run['decode_only_steps_s']:.2f} s, mean batch {run['mean_decode_batch']:.1f}), "
                f"{run['adapter_slot_loads']} slot loads, "
                f"{run['retractions']} retractions")
    return f"lora_bench {what}: {body}; build {run['build_s']:.1f} s, graphs={run['cuda_graphs']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("latency", "offline"))
    p.add_argument("--adapters", type=parse_run, nargs="+", default=[(1, None, None)],
                   help="one run per entry: N adapters (0: the base model, LoRA off), N:SLOTS, N[:SLOTS]@BACKEND")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1])
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=None, help="default: 128 (latency), 512 (offline)")
    p.add_argument("--output-len", type=int, default=None, help="default: 64 (latency), 256 (offline)")
    p.add_argument("--output-file", default=None)
    add_settings_arguments(p)
    args = p.parse_args(argv)
    from jackfield.bench.common import write_report

    latency = args.mode == "latency"
    input_len = args.input_len or (128 if latency else 512)
    output_len = args.output_len or (64 if latency else 256)
    command = "benchmarks/lora_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    runs, base = [], None
    with tempfile.TemporaryDirectory(prefix="jf-lora-bench-") as tmp:
        for count, slots, backend in args.adapters:
            run = one_run(args, count, slots, backend, input_len, output_len, Path(tmp))
            runs.append(run)
            base = run if count == 0 and base is None else base
            print(summary(run, base), file=sys.stderr, flush=True)
            if args.output_file:  # after every run, so a cut-short command keeps what it measured
                write_report(args.output_file, command, {"runs": runs})
    if base is not None and base is not runs[0]:  # the base ran after some runs: their ratios now
        for run in runs:
            if run is not base:
                print(summary(run, base), file=sys.stderr, flush=True)
    if not args.output_file:
        write_report(None, command, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
