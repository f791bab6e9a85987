"""Where a decode step's time goes on the GPU: device time of the captured graph alone, the step time
through the scheduler, and a torch.profiler trace of the scheduler loop with the device's idle gaps.

  python3 benchmarks/profile_decode.py --model benchmarks/configs/llama-3.1-8b.json --load-format dummy \
      --attention-backend triton --batch-size 1 [--trace-dir DIR] [--phases N] [--prefill-prompts N]

Prints one JSON object; `gpu_busy_fraction` < 1 means the device waited for the host. `graph_kernels`
breaks the graph's device time down by kernel. `graph_only_ms` replays the graph on whatever its
static inputs hold after the run; on the 8B batch-256 run its attention kernels took 3.1 ms against
6.8 ms in real steps (not explained yet), so trust `host_phases.step_kernels` for large batches
(with --phases: host time per scheduler phase, every host-device sync by call site, and the device
time of real decode steps, by kernel).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import torch

from jackfield.bench.common import provenance, quantization_info, random_prompts, run_requests, submit_requests
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


def kernel_breakdown(fn, iters: int, top: int = 25) -> dict:
    """Device time per call of fn, in total, by kernel name (CUDA-graph kernels included) and by the
    host op that launched it (`ops`: which aten or jackfield call an anonymous elementwise kernel is)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            r = rows.setdefault(e.name, [0.0, 0])
            r[0] += e.device_time_total
            r[1] += 1
    total = sum(r[0] for r in rows.values())
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]
    cpu = torch.autograd.DeviceType.CPU
    ops = sorted((a for a in prof.key_averages() if a.device_type == cpu and a.self_device_time_total > 0),
                 key=lambda a: -a.self_device_time_total)[:top]
    return {"device_us_per_call": round(total / iters, 1), "kernels": [
        {"kernel": name[:90], "us_per_call": round(t / iters, 1), "launches_per_call": c / iters,
         "share": round(t / total, 3)} for name, (t, c) in ranked],
        "ops": [{"op": a.key[:90], "device_us_per_call": round(a.self_device_time_total / iters, 1),
                 "calls_per_call": a.count / iters} for a in ops]}


class PhaseTimer:
    """Wall time of the scheduler's step phases, accumulated per name (patched in by `host_phases`)."""

    def __init__(self):
        self.ms: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[name] = self.ms.get(name, 0.0) + 1e3 * (time.perf_counter() - t0)
        return timed


def host_phases(sched, prompts: list[list[int]], steps: int) -> dict:
    """Per decode step: host milliseconds in each phase of Scheduler.step, and every host-device
    synchronization the steps make (torch's sync debug mode), by jackfield call site."""
    import traceback
    import warnings
    from collections import Counter

    from jackfield.scheduler import overlap, scheduler as sched_mod

    submit_requests(sched, prompts, steps * 2 + 8, prefix="ph")
    while sched.waiting or sched.chunked_req is not None:
        sched.step()
    for _ in range(3):
        sched.step()
    timer, sites = PhaseTimer(), Counter()
    patches = [(sched_mod, "plan_batch"), (sched, "_commit"), (sched, "_process"), (sched, "_emit")]
    if sched.worker is not None:
        patches.append((sched.worker, "launch"))
    saved = [(obj, name, getattr(obj, name)) for obj, name in patches]
    saved_wait = overlap.CudaPending.wait
    for obj, name, fn in saved:
        setattr(obj, name, timer.wrap(name, fn))
    overlap.CudaPending.wait = timer.wrap("wait", saved_wait)

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-2] if "jackfield" in f.filename]
        sites[" < ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames[-3:]))] += 1

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode(1)
            for _ in range(steps):
                sched.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        overlap.CudaPending.wait = saved_wait
    total = 1e3 * (time.perf_counter() - t0)
    step_kernels = kernel_breakdown(sched.step, 5)
    while sched.has_work():
        sched.step()
    return {"step_ms": round(total / steps, 3), "phase_ms": {k: round(v / steps, 3) for k, v in timer.ms.items()},
            "syncs_per_step": {k: v / steps for k, v in sites.most_common(20)}, "step_kernels": step_kernels}


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
    p.add_argument("--profile-len", type=int, default=24, help="decode steps inside the profiler (0: no trace)")
    p.add_argument("--prefill-prompts", type=int, default=0,
                   help="also break down one prefill step of this many prompts of --input-len tokens")
    p.add_argument("--phases", type=int, default=0,
                   help="time this many decode steps by scheduler phase and list their host-device syncs")
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
    out = {**provenance("python3 benchmarks/profile_decode.py " + " ".join(sys.argv[1:])),
           "model": info.model_path, "attention_backend": info.components["attention"]["name"],
           **quantization_info(info), "batch_size": bs,
           "overlap": sched.overlap, "graph_only_ms": graph_only_ms(runner, bs),
           "step_ms": 1e3 * decode_s / max(args.output_len - 1, 1),
           "decode_tok_per_s": bs * (args.output_len - 1) / decode_s}
    print(json.dumps(out), file=sys.stderr, flush=True)  # the measurement so far, should a later part not finish
    gemv = next((m.method.gemv for m in runner.model.modules() if hasattr(getattr(m, "method", None), "gemv")), None)
    if gemv is not None and gemv.choices:
        out["gemv_choices"] = {f"{key[0]} {key[1]}x{key[2]}": str(c) for key, c in gemv.choices.items()}
    if runner.graph_runner is not None and bs in runner.graph_runner.graphs:
        out["graph_kernels"] = kernel_breakdown(runner.graph_runner.graphs[bs].replay, 10)
    if args.phases and torch.cuda.is_available():
        out["host_phases"] = host_phases(sched, random_prompts(bs, args.input_len, vocab, 4), args.phases)
    if args.prefill_prompts:
        pre = random_prompts(args.prefill_prompts, args.input_len, vocab, 3)
        out["prefill_kernels"] = kernel_breakdown(lambda: run_requests(sched, pre, 1, prefix="pre"), 2)
    if args.profile_len > 0:
        out.update(profiled_scheduler_loop(sched, bs, args.input_len, args.profile_len, args.trace_dir,
                                           out["attention_backend"]))
    print(json.dumps(out, indent=2))
    return 0


def profiled_scheduler_loop(sched, bs: int, input_len: int, steps: int, trace_dir: str | None, backend: str) -> dict:
    """`steps` decode steps through the scheduler under torch.profiler: the device's busy fraction
    and idle gaps from the chrome trace (written to trace_dir), the host op table on stderr."""
    from torch.profiler import ProfilerActivity, profile

    prompts = random_prompts(bs, input_len, sched.runner.config.vocab_size, 2)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_requests(sched, prompts, steps, prefix="prof")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    trace = os.path.join(trace_dir or ".", f"trace-{backend}-bs{bs}-{int(time.time())}.json")
    prof.export_chrome_trace(trace)
    return {**busy_intervals(trace), "profiled_steps": steps, "trace": trace}


if __name__ == "__main__":
    sys.exit(main())
