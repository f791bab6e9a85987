"""Where a decode step's time goes on the GPU: device time of the captured graph alone, the step time
through the scheduler, and a torch.profiler trace of the scheduler loop with the device's idle gaps.

  python3 benchmarks/profile_decode.py --model benchmarks/configs/llama-3.1-8b.json --load-format dummy \
      --attention-backend triton --batch-size 1 [--trace-dir DIR]

Prints one JSON object; `gpu_busy_fraction` < 1 means the device waited for the host.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import torch

from jackfield.bench.common import random_prompts, run_requests
from jackfield.cli.settings_args import add_settings_arguments, cli_overrides
from jackfield.config import load_settings
from jackfield.engine_loop import build_scheduler


def graph_only_ms(runner, bs: int, iters: int = 50) -> float | None:
    """Replay the captured decode graph for batch size `bs` back to back: pure device time."""
    gr = runner.graph_runner
    if gr is None or bs not in gr.graphs:
        return None
    graph = gr.graphs[bs]
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def busy_intervals(trace_path: str) -> dict:
    """Union of device kernel/memcpy intervals in a chrome trace; returns busy fraction and gaps."""
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                   if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not spans:
        return {}
    busy, gaps, cur_s, cur_e = 0.0, [], spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    window = spans[-1][1] - spans[0][0]
    gaps.sort(reverse=True)
    return {"window_ms": window / 1e3, "gpu_busy_ms": busy / 1e3, "gpu_busy_fraction": busy / window,
            "gaps_over_50us": sum(1 for g in gaps if g > 50), "largest_gaps_us": [round(g, 1) for g in gaps[:10]],
            "idle_ms": (window - busy) / 1e3}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--profile-len", type=int, default=24, help="decode steps inside the profiler")
    p.add_argument("--trace-dir", default=os.environ.get("OUT"), help="write the chrome trace here")
    add_settings_arguments(p)
    args = p.parse_args()
    overrides = dict(cli_overrides(args), disable_radix_cache=True)
    sched, info = build_scheduler(load_settings(args.config_file, overrides).settings, progress=False)
    runner, bs = sched.runner, args.batch_size
    vocab = runner.config.vocab_size
    run_requests(sched, random_prompts(bs, 16, vocab, 1), 8, prefix="warm")
    res = run_requests(sched, random_prompts(bs, args.input_len, vocab, 0), args.output_len)
    decode_s = res.total_s - res.first_token_s
    out = {"attention_backend": info.components["attention"]["name"], "batch_size": bs,
           "overlap": sched.overlap, "graph_only_ms": graph_only_ms(runner, bs),
           "step_ms": 1e3 * decode_s / max(args.output_len - 1, 1),
           "decode_tok_per_s": bs * (args.output_len - 1) / decode_s}
    gemv = next((m.method.gemv for m in runner.model.modules() if hasattr(getattr(m, "method", None), "gemv")), None)
    if gemv is not None and gemv.choices:
        out["gemv_choices"] = {f"{n}x{k}": str(c) for (n, k, _), c in gemv.choices.items()}
    from torch.profiler import ProfilerActivity, profile

    prompts = random_prompts(bs, args.input_len, vocab, 2)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_requests(sched, prompts, args.profile_len, prefix="prof")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table, file=sys.stderr)
    trace = os.path.join(args.trace_dir or ".", f"trace-{out['attention_backend']}-bs{bs}-{int(time.time())}.json")
    prof.export_chrome_trace(trace)
    out.update(busy_intervals(trace))
    out["profiled_steps"] = args.profile_len
    out["trace"] = trace
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
