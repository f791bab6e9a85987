"""`jackfield bench offline`: throughput with every request submitted at once (JSON output).

With `--compare-transformers`, transformers' continuous batching (`generate_batch`) runs the same
prompts first, in a subprocess (`hf_peer.py`), and the report holds both and their ratio.
"""
from __future__ import annotations

import argparse
import sys

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--prompt-seed", dest="bench_seed", type=int, default=0)
    p.add_argument("--output-file", default=None, help="write the JSON report here")
    p.add_argument("--compare-transformers", action="store_true",
                   help="first run the same prompts through transformers' continuous batching (subprocess)")
    add_settings_arguments(p)


def run(args) -> int:
    from jackfield.bench.common import attention_name, quantization_info, random_prompts, run_requests, write_report
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    overrides = dict(cli_overrides(args))
    overrides.setdefault("disable_radix_cache", True)
    settings = load_settings(args.config_file, overrides).settings
    peer = transformers_peer(settings, args) if args.compare_transformers else None
    sched, info = build_scheduler(settings, progress=False)
    vocab = sched.runner.config.vocab_size
    # a batch and a single request: the run's tail decodes at batch 1, whose graph (compiled on the
    # CPU, decode_compile.py) is not the batched one
    run_requests(sched, random_prompts(min(args.num_prompts, 8), 16, vocab, 99), 4, prefix="warm")
    run_requests(sched, random_prompts(1, 16, vocab, 98), 4, prefix="warm1")
    res = run_requests(sched, random_prompts(args.num_prompts, args.input_len, vocab, args.bench_seed), args.output_len)
    out_tokens = sum(len(v) for v in res.outputs.values())
    metrics = {"model": info.model_path, "device": info.device, "dtype": info.dtype,
               "attention_backend": attention_name(info.components),
               **quantization_info(info), "num_prompts": args.num_prompts,
               "input_len": args.input_len, "output_len": args.output_len, "total_s": res.total_s,
               "output_tok_per_s": out_tokens / res.total_s,
               "total_tok_per_s": (out_tokens + args.num_prompts * args.input_len) / res.total_s,
               "request_per_s": args.num_prompts / res.total_s, "forward_steps": len(res.step_times),
               # host time of steps that launched a prefill vs decode-only steps (under overlap a
               # step mostly waits for the previous forward, so the split is approximate)
               "prefill_steps_s": sum(t for t, pre, _ in res.step_times if pre),
               "decode_only_steps_s": sum(t for t, pre, _ in res.step_times if not pre),
               "retractions": sched.stats.retractions, "max_running_requests": info.max_running_requests}
    if peer is not None:
        metrics["transformers"] = peer
        if "output_tok_per_s" in peer:
            metrics["speedup_output_tok_per_s"] = metrics["output_tok_per_s"] / peer["output_tok_per_s"]
    sched.close()  # stops the forward worker and, under tensor parallelism, the follower ranks
    write_report(args.output_file, "jackfield bench offline " + " ".join(sys.argv[3:]), metrics)
    return 0


def transformers_peer(settings, args) -> dict:
    """transformers' continuous batching on this run's prompts, on the device and dtype jackfield
    will use, before jackfield takes the GPU."""
    from jackfield.bench.hf_peer import run_offline_peer
    from jackfield.runtime_setup import resolve_target

    src, _, device, dtype = resolve_target(settings)
    return run_offline_peer(str(src.origin), src.load_format, str(device), str(dtype).removeprefix("torch."),
                            args.num_prompts, args.input_len, args.output_len, args.bench_seed)
