"""`jackfield bench prefix`: a shared-prefix workload with the radix cache on and off.

N requests share one long prefix plus a few unique tokens each; reports prefill tokens computed,
cached tokens and total time for both settings, and their ratio.
"""
from __future__ import annotations

import argparse
import sys

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--prefix-len", type=int, default=1000)
    p.add_argument("--suffix-len", type=int, default=50)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--output-file", default=None, help="write the JSON report here")
    add_settings_arguments(p, skip=("disable_radix_cache",))


def run(args) -> int:
    from jackfield.bench.common import random_prompts, run_requests, write_report
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler

    results = {}
    outputs = {}
    for label, disable in (("radix_on", False), ("radix_off", True)):
        overrides = dict(cli_overrides(args), disable_radix_cache=disable)
        sched, info = build_scheduler(load_settings(args.config_file, overrides).settings, progress=False)
        vocab = sched.runner.config.vocab_size
        prefix = random_prompts(1, args.prefix_len, vocab, 1)[0]
        suffixes = random_prompts(args.num_prompts, args.suffix_len, vocab, 2)
        run_requests(sched, random_prompts(4, 16, vocab, 3), 2, prefix="warm")
        sched.stats.prefill_tokens_computed = 0
        res = run_requests(sched, [prefix + s for s in suffixes], args.output_len)
        outputs[label] = res.outputs
        results[label] = {"total_s": res.total_s, "prefill_tokens_computed": sched.stats.prefill_tokens_computed,
                          "cached_tokens": sum(res.cached_tokens.values()),
                          "output_tok_per_s": sum(len(v) for v in res.outputs.values()) / res.total_s}
        del sched
    on, off = results["radix_on"], results["radix_off"]
    metrics = {"model": info.model_path, "device": info.device, "dtype": info.dtype,
               "num_prompts": args.num_prompts, "prefix_len": args.prefix_len, "suffix_len": args.suffix_len,
               "output_len": args.output_len, **results,
               "speedup_total_time": off["total_s"] / on["total_s"],
               "prefill_token_ratio": off["prefill_tokens_computed"] / max(on["prefill_tokens_computed"], 1),
               "same_greedy_outputs": outputs["radix_on"] == outputs["radix_off"]}
    write_report(args.output_file, "jackfield bench prefix " + " ".join(sys.argv[3:]), metrics)
    return 0
