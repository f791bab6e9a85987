"""`jackfield bench spec`: output tokens/s with speculative decoding on and off, per concurrency.

One engine with the configured decoder (`--speculative-algorithm`, ...) runs every prompt twice at
each concurrency of `--batch-sizes`: once with `speculative: false` on every request (plain decode
steps, exactly as without a decoder) and once speculating. Requests run closed-loop: `bs` in
flight, the next one submitted as one finishes, greedy by default, each ending at EOS or
`--output-len`. Reported per concurrency: tok/s off and on and their ratio, the CPU seconds of
each run (what to compare on a shared CPU machine), the speculation's mean accepted length (tokens
per verify forward per request) and acceptance rate, and (greedy) how many requests' outputs
differ between the two runs (0 expected). `--profile FILE` writes a cProfile of the speculating
runs (the scheduler steps in this thread): where a speculative step's host time goes.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

from jackfield.cli.settings_args import add_settings_arguments, cli_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", default="rewrite", choices=["rewrite", "quotes", "chat"],
                   help="rewrite: code with one change; quotes: summaries quoting a passage; chat: open questions")
    p.add_argument("--batch-sizes", default="1", help="comma-separated concurrencies, e.g. 1,8,32,128")
    p.add_argument("--num-prompts", type=int, default=0, help="prompts per concurrency (default: max(4, 2 x bs))")
    p.add_argument("--output-len", type=int, default=256, help="most tokens per request (requests stop at EOS)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (outputs compared on and off)")
    p.add_argument("--output-file", default=None, help="write the JSON report here (rewritten after each concurrency)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="cProfile the speculating runs; the functions with the most own and cumulative time go here")
    add_settings_arguments(p)


def run_closed_loop(sched, prompts: list[list[int]], concurrency: int, params,
                    top2_gaps: dict | None = None) -> tuple[float, float, dict]:
    """Wall seconds and this process's CPU seconds to run every prompt with `concurrency` in
    flight, and the outputs (CPU seconds tell more than wall time on a shared CPU machine).
    With `top2_gaps` (and `params` asking for 2 top logprobs), it receives per request the margin
    of each greedy choice: the logprob of the best token minus that of the second best.
    Prompt i samples with seed `params.seed + i`. Requests that share a seed draw the same random
    numbers, so on a model with flat distributions (dummy weights) they sample alike, which the
    n-gram decoder's trie over recent requests then predicts: `run` gives every prompt of the
    benchmark its own seed (the same one on and off)."""
    from dataclasses import replace

    from jackfield.bench.common import sync
    from jackfield.io_struct import TokenizedGenerateReq

    out: dict[str, list[int]] = {}
    queue = list(enumerate(prompts))
    in_flight = 0
    sync(sched.runner.device)
    t0, c0 = time.perf_counter(), time.process_time()

    def submit():
        nonlocal in_flight
        i, ids = queue.pop(0)
        out[f"q{i}"] = []
        in_flight += 1
        seeded = params if params.seed is None else replace(params, seed=params.seed + i)
        sched.handle(TokenizedGenerateReq(f"q{i}", ids, seeded))

    while queue and in_flight < concurrency:
        submit()
    while sched.has_work():
        for batch in sched.step():
            for o in batch.outputs:
                out[o.rid] += o.new_token_ids
                if top2_gaps is not None:
                    top2_gaps.setdefault(o.rid, []).extend(lp.top[0][1] - lp.top[1][1] for lp in o.logprobs or ())
                if o.finished is not None:
                    in_flight -= 1
                    if queue:
                        submit()
    sync(sched.runner.device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def run(args) -> int:
    from dataclasses import replace

    from jackfield.bench.common import attention_name, write_report
    from jackfield.bench.spec_workloads import prompts
    from jackfield.config import load_settings
    from jackfield.engine_loop import build_scheduler
    from jackfield.sampling.params import SamplingParams

    overrides = dict(cli_overrides(args))
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    overrides.setdefault("max_running_requests", max(sizes))
    settings = load_settings(args.config_file, overrides).settings
    if not settings.speculative_algorithm:
        print("jackfield: error: bench spec needs --speculative-algorithm", file=sys.stderr)
        return 2
    sched, info = build_scheduler(settings, progress=False)
    if sched.tokenizer is None:
        print("jackfield: error: bench spec needs a model with a tokenizer", file=sys.stderr)
        return 2
    on = SamplingParams(max_new_tokens=args.output_len, temperature=args.temperature, seed=0)
    off = replace(on, speculative=False)
    run_closed_loop(sched, prompts(sched.tokenizer, "chat", 2), 2, replace(on, max_new_tokens=8))  # warm-up
    rows, seed = [], 2
    profiler = cProfile.Profile() if args.profile else None
    command = "jackfield bench spec " + " ".join(sys.argv[3:])

    def metrics() -> dict:
        return {"model": info.model_path, "device": info.device, "dtype": info.dtype,
                "attention_backend": attention_name(info.components), "algorithm": settings.speculative_algorithm,
                "num_draft_tokens": settings.speculative_num_draft_tokens, "workload": args.workload,
                "output_len": args.output_len, "temperature": args.temperature,
                "load_policy": sched.spec.policy.table(), "results": rows}

    for bs in sizes:
        ids = prompts(sched.tokenizer, args.workload, args.num_prompts or max(4, 2 * bs))
        st = sched.spec.stats
        t_off, cpu_off, out_off = run_closed_loop(sched, ids, bs, replace(off, seed=seed))
        before = (st.verify_steps, st.proposed, st.accepted, st.emitted)
        if profiler is not None:
            profiler.enable()
        t_on, cpu_on, out_on = run_closed_loop(sched, ids, bs, replace(on, seed=seed))
        if profiler is not None:
            profiler.disable()
        seed += len(ids)
        steps, proposed, accepted, emitted = (a - b for a, b in zip((st.verify_steps, st.proposed, st.accepted,
                                                                      st.emitted), before))
        tokens = sum(map(len, out_on.values()))
        rows.append({
            "batch_size": bs, "num_prompts": len(ids), "output_tokens": tokens,
            "tok_per_s_off": sum(map(len, out_off.values())) / t_off, "tok_per_s_on": tokens / t_on,
            "speedup": (tokens / t_on) / (sum(map(len, out_off.values())) / t_off),
            "cpu_s_off": cpu_off, "cpu_s_on": cpu_on,
            "accept_length": emitted / steps if steps else None,
            "accept_rate": accepted / proposed if proposed else None, "verify_request_steps": steps,
            "outputs_differing": sum(out_on[k] != out_off[k] for k in out_on) if args.temperature == 0 else None,
        })
        print(rows[-1], file=sys.stderr)
        if bs != sizes[-1]:  # the rows so far to the file, in case a time limit cuts the run short
            write_report(args.output_file, command, metrics(), echo=False)
    write_report(args.output_file, command, metrics())
    if profiler is not None:
        write_profile(profiler, args.profile)
    sched.close()
    return 0


def write_profile(profiler, path: str, top: int = 40) -> None:
    """The `top` functions by own time, then by cumulative time, as pstats prints them."""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    with open(path, "w") as f:
        f.write(out.getvalue())
