"""`jackfield bench latency`: one static batch — prefill time and decode tokens/s (JSON output),
measured after a warm-up batch of the same shape.

With `--compare-transformers` the same weights run through Hugging Face `generate` in the same
process, side by side (`hf_peer.py`).
"""
from __future__ import annotations

import argparse
import sys

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, nargs="+", default=[1])
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--compare-transformers", action="store_true", help="also time HF generate on the same weights")
    p.add_argument("--hf-compile", action="store_true",
                   help="HF side: static cache, which makes transformers compile its decode step (GPU)")
    p.add_argument("--output-file", default=None, help="write the JSON report here")
    add_settings_arguments(p)


def measure(sched, bs: int, input_len: int, output_len: int, seed: int = 0) -> dict:
    from jackfield.bench.common import random_prompts, run_requests

    vocab = sched.runner.config.vocab_size
    # warm up on the measured shapes: a first forward of a new token count pays one-time costs (on
    # CUDA, kernels compiled or tuned for that size) that are not the prefill being measured
    run_requests(sched, random_prompts(bs, input_len, vocab, seed + 1), 4, prefix="warm")
    res = run_requests(sched, random_prompts(bs, input_len, vocab, seed), output_len)
    prefill_s = res.first_token_s  # prefill of the whole batch, up to every request's first token
    decode_s = res.total_s - prefill_s
    decode_tokens = sum(len(v) for v in res.outputs.values()) - bs
    return {"batch_size": bs, "input_len": input_len, "output_len": output_len, "prefill_s": prefill_s,
            "prefill_tok_per_s": bs * input_len / prefill_s if prefill_s else None,
            "decode_s": decode_s, "decode_tok_per_s": decode_tokens / decode_s if decode_s else None,
            "forward_steps": len(res.step_times), "total_s": res.total_s}


def run(args) -> int:
    from jackfield.bench.common import attention_name, quantization_info, write_report
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    overrides = dict(cli_overrides(args))
    overrides.setdefault("chunked_prefill_size", max(args.input_len * max(args.batch_size), 2048))
    overrides.setdefault("max_prefill_tokens", max(args.input_len * max(args.batch_size), 16384))
    overrides.setdefault("disable_radix_cache", True)
    settings = load_settings(args.config_file, overrides).settings
    sched, info = build_scheduler(settings, progress=False)
    rows, hf_model = [], None
    for bs in args.batch_size:
        row = {"jackfield": measure(sched, bs, args.input_len, args.output_len)}
        if args.compare_transformers:
            from jackfield.bench.hf_peer import load_model, measure_generate

            dev = sched.runner.device
            try:
                if hf_model is None:
                    hf_model = load_model(sched.runner.setup.source, sched.runner.dtype, dev)
                hf = measure_generate(hf_model, dev, bs, args.input_len, args.output_len, args.hf_compile)
                row["transformers"] = hf
                row["speedup_decode"] = row["jackfield"]["decode_tok_per_s"] / hf["decode_tok_per_s"]
            except Exception as exc:  # the peer failing must not lose our own numbers
                row["transformers_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    metrics = {"model": info.model_path, "device": info.device, "dtype": info.dtype,
               "attention_backend": attention_name(info.components),
               **quantization_info(info), "results": rows}
    sched.close()  # stops the forward worker and, under tensor parallelism, the follower ranks
    write_report(args.output_file, "jackfield bench latency " + " ".join(sys.argv[3:]), metrics)
    return 0
