"""Host time of a speculative step against a plain decode step, on a tiny random Llama (CPU).

  python3 benchmarks/spec_host_time.py --batch-sizes 32,128 [--output-len 48] [--profile 128] [--out REPORT]

Runs `bs` requests with repetitive prompts (the n-gram decoder finds drafts in them) to the end,
once plainly (`speculative: false`) and once speculating (load policy off), and times every decode
step of the full batch: CPU seconds of this thread (`time.thread_time`: other processes on a shared
machine do not count) of the step, of the model forward inside it (`runner.forward`, attention
metadata included) and of the attention metadata alone. `host_ms` (step minus forward) is the
scheduler's and the decoder's Python: what a speculative step adds on the GPU, where the forward
runs on the device. With `--profile BS`, a cProfile of the speculative steps at that batch size
(top functions by own time) is printed too. Prints the report as JSON (command, commit, machine,
results; each row also to stderr as it is measured). CPU timings: run on a quiet machine.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time

import torch


def prompts(bs: int, vocab: int) -> list[list[int]]:
    """Repeated patterns of mixed lengths, one per request."""
    out = []
    for i in range(bs):
        pattern = [2 + (7 * i + j) % (vocab - 2) for j in range(4 + i % 5)]
        out.append((pattern * 12)[: 24 + i % 17])
    return out


def measure(sched, ids: list[list[int]], output_len: int, speculative: bool, profiler=None) -> dict:
    from jackfield.io_struct import TokenizedGenerateReq
    from jackfield.sampling.params import SamplingParams

    runner, backend = sched.runner, sched.runner.attn_backend
    timed = {"forward": 0.0, "meta": 0.0, "mode": None}
    forward, meta = runner.forward, backend.init_forward_metadata

    def timing(fn, key: str):
        """fn, adding its thread CPU seconds to timed[key] (and noting the forward's mode)."""
        def wrapped(fb):
            t = time.thread_time()
            try:
                return fn(fb)
            finally:
                timed[key] += time.thread_time() - t
                timed["mode"] = fb.mode if key == "forward" else timed["mode"]
        return wrapped

    runner.forward, backend.init_forward_metadata = timing(forward, "forward"), timing(meta, "meta")
    params = SamplingParams(max_new_tokens=output_len, temperature=0.0, speculative=speculative, ignore_eos=True)
    for i, p in enumerate(ids):
        sched.handle(TokenizedGenerateReq(f"r{i}", p, params))
    steps = []
    try:
        while sched.has_work():
            timed.update(forward=0.0, meta=0.0, mode=None)
            full = sched.running is not None and len(sched.running) == len(ids) and not sched.waiting
            if profiler is not None and full and speculative:
                profiler.enable()
            t = time.thread_time()
            sched.step()
            wall = time.thread_time() - t
            if profiler is not None:
                profiler.disable()
            mode = timed["mode"]
            if full and mode is not None and (mode.is_decode() or mode.name == "TARGET_VERIFY"):
                steps.append((wall, timed["forward"], timed["meta"]))
    finally:
        runner.forward, backend.init_forward_metadata = forward, meta
    n = max(1, len(steps))
    wall, fwd, meta_s = (sum(s[k] for s in steps) / n * 1e3 for k in range(3))
    return {"steps": len(steps), "step_ms": wall, "forward_ms": fwd, "attn_meta_ms": meta_s, "host_ms": wall - fwd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", default="32,128")
    ap.add_argument("--output-len", type=int, default=48)
    ap.add_argument("--attention-backend", default="torch_native")
    ap.add_argument("--profile", type=int, default=0, help="cProfile the speculative steps at this batch size")
    ap.add_argument("--out", default=None, help="also write the report (command, commit, machine, results) here")
    args = ap.parse_args()

    from jackfield.bench.common import write_report
    from jackfield.testing.suites.speculative import VOCAB, spec_scheduler, tiny_target
    from jackfield_plugins.spec.ngram import NgramDecoder

    torch.set_num_threads(1)
    rows, report = [], None
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        with tempfile.TemporaryDirectory() as work:
            sched = spec_scheduler(NgramDecoder, tiny_target(), work, max_running_requests=bs,
                                   max_total_tokens=bs * (64 + args.output_len + 16), cuda_graph_max_bs=1,
                                   attention_backend=args.attention_backend, disable_radix_cache=True)
            try:
                ids = prompts(bs, VOCAB)
                measure(sched, ids[:4], 8, True)  # warm-up
                plain = measure(sched, ids, args.output_len, False)
                prof = cProfile.Profile() if args.profile == bs else None
                spec = measure(sched, ids, args.output_len, True, prof)
                st = sched.spec.stats
                if prof is not None:
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
                    report = buf.getvalue()
            finally:
                sched.close()
        rows.append({"batch_size": bs, "plain": plain, "spec": spec,
                     "spec_host_over_plain_host": spec["host_ms"] / plain["host_ms"],
                     "accept_length": st.emitted / st.verify_steps if st.verify_steps else None})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each row as it comes, in case a limit cuts the run
    write_report(args.out, "python3 benchmarks/spec_host_time.py " + " ".join(sys.argv[1:]), {"results": rows})
    if report:
        print(report)


if __name__ == "__main__":
    main()
