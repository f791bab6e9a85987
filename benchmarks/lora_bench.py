"""Multi-LoRA benchmarks: what serving adapters costs against the base model (JSON report).

    python benchmarks/lora_bench.py latency [--adapters N] [--rank R] [--batch-size 1 16] [settings…]
    python benchmarks/lora_bench.py offline [--adapters N] [--rank R] [--num-prompts 256] [settings…]

`--adapters 0` is the base model with LoRA off (the reference); `--adapters N` writes N random
rank-R adapters on every linear layer (q/k/v/o/gate/up/down; one safetensors file shared by
symlink, each adapter its own config) and serves them with LoRA on. `latency` runs one static batch,
every request on the first adapter, and reports prefill time and decode tok/s (`jackfield bench
latency`'s measurement). `offline` submits every request at once, request i on adapter i % N, and
reports throughput and how many times adapters were copied into device slots (more adapters than
`--max-loras` means swaps). Other arguments are jackfield settings (`--model`, `--load-format dummy`,
`--max-loras`, `--max-loras-per-batch`, `--lora-backend`, …).

    benchmarks/gpu_suite.sh lora   # the H100 runs: 8B batch-1 decode, offline over 8 / 64 adapters, swapping
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("latency", "offline"))
    p.add_argument("--adapters", type=int, default=1, help="0: the base model, LoRA off")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1])
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=None, help="default: 128 (latency), 512 (offline)")
    p.add_argument("--output-len", type=int, default=None, help="default: 64 (latency), 256 (offline)")
    p.add_argument("--output-file", default=None)
    add_settings_arguments(p)
    args = p.parse_args(argv)
    from jackfield.bench.common import attention_name, random_prompts, run_requests, write_report
    from jackfield.loader.source import resolve_model

    latency = args.mode == "latency"
    input_len = args.input_len or (128 if latency else 512)
    output_len = args.output_len or (64 if latency else 256)
    extra = {}
    with tempfile.TemporaryDirectory(prefix="jf-lora-bench-") as tmp:
        if args.adapters:
            model = args.model
            hf_config = resolve_model(model, args.load_format or "auto").hf_config
            extra["lora_paths"] = write_adapters(hf_config, args.rank, args.adapters, Path(tmp))
            extra.setdefault("max_lora_rank", args.rank)
        if latency:
            longest = input_len * max(args.batch_size)
            extra.update(chunked_prefill_size=max(longest, 2048), max_prefill_tokens=max(longest, 16384))
        sched, info = build(args, extra)
        names = [f"lora{i}" for i in range(args.adapters)] or [None]
        vocab = sched.runner.config.vocab_size
        pool = sched.runner.lora.pool if sched.runner.lora is not None else None
        metrics = {"model": info.model_path, "device": info.device, "dtype": info.dtype,
                   "attention_backend": attention_name(info.components),
                   "lora_backend": info.components["lora"]["name"] if args.adapters else None,
                   "adapters": args.adapters, "rank": args.rank if args.adapters else None,
                   "max_loras": info.settings.max_loras if args.adapters else None,
                   "input_len": input_len, "output_len": output_len,
                   "cuda_graphs": sched.runner.graph_runner is not None}
        if latency:
            rows = []
            for bs in args.batch_size:
                warm = random_prompts(bs, 16, vocab, 1)
                run_requests(sched, warm, 4, prefix="warm", loras=[names[0]] * bs)
                res = run_requests(sched, random_prompts(bs, input_len, vocab, 0), output_len, loras=[names[0]] * bs)
                decode_s = res.total_s - res.first_token_s
                decode_tokens = sum(len(v) for v in res.outputs.values()) - bs
                rows.append({"jackfield": {"batch_size": bs, "prefill_s": res.first_token_s, "decode_s": decode_s,
                                           "decode_tok_per_s": decode_tokens / decode_s if decode_s else None,
                                           "total_s": res.total_s}})
            metrics["results"] = rows
        else:
            n = args.num_prompts
            loras = [names[i % len(names)] for i in range(n)]
            run_requests(sched, random_prompts(min(n, 8), 16, vocab, 99), 4, prefix="warm", loras=loras[:min(n, 8)])
            loads = pool.loads if pool is not None else 0
            res = run_requests(sched, random_prompts(n, input_len, vocab, 0), output_len, loras=loras)
            out_tokens = sum(len(v) for v in res.outputs.values())
            metrics.update(num_prompts=n, total_s=res.total_s, output_tok_per_s=out_tokens / res.total_s,
                           total_tok_per_s=(out_tokens + n * input_len) / res.total_s,
                           forward_steps=len(res.step_times), retractions=sched.stats.retractions,
                           adapter_slot_loads=(pool.loads - loads) if pool is not None else 0)
        sched.close()
    write_report(args.output_file, "benchmarks/lora_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
