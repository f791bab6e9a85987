"""The scheduler's memory under the soak's request mix, in one process (no server, no HTTP).

Drives a Scheduler on the embedded SmolLM2 (or --model) with the requests of `jackfield bench soak`
(core/bench/soak_requests.py): varied prompt lengths, n up to 3 (n requests each), stop strings,
JSON constraints, client aborts mid-way; CONCURRENCY soak requests in flight. Every REPORT requests it
prints the process RSS, the Python heap (tracemalloc), glibc's heap (mallinfo2: bytes in the arenas,
in use, free but kept; bytes in mmap'ed blocks), the gc-tracked objects and the CPU time so far, and at
the end the tracemalloc lines and object types that grew most between the first report and the last.
`--trim-every S` trims the heap as the server's scheduler process does (jackfield.server.heap);
glibc's own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX) compare other remedies.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sched_memory.py --requests 200 --report 20 \
        --max-tokens 16 --long-words 1200 --no-tracemalloc [--trim-every 5]
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import os
import random
import time
import tracemalloc

import torch

LIBC = ctypes.CDLL("libc.so.6")

from jackfield.bench.soak_requests import MixOptions, make_request
from jackfield.config import settings_for
from jackfield.engine_loop import build_scheduler
from jackfield.io_struct import AbortReq, TokenizedGenerateReq
from jackfield.sampling.constraint import ANY_JSON_OBJECT
from jackfield.sampling.params import SamplingParams
from jackfield.server.heap import HeapTrimmer


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_info() -> _MallInfo2:
    """glibc's heap: `arena` bytes taken with brk/in arenas, `uordblks` of them in use, `fordblks` free
    but kept; `hblkhd` bytes in mmap'ed blocks (returned to the OS when freed)."""
    LIBC.mallinfo2.restype = _MallInfo2
    return LIBC.mallinfo2()


def type_counts() -> collections.Counter:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def to_reqs(i: int, soak, tok, max_tokens: int) -> list[TokenizedGenerateReq]:
    body = soak.body
    sp = body.get("sampling_params", body)
    text = body.get("text") or body.get("prompt") or body["messages"][0]["content"]
    ids = tok.encode(text)
    params = dict(max_new_tokens=min(int(sp.get("max_new_tokens") or sp.get("max_tokens")), max_tokens),
                  temperature=sp["temperature"], seed=sp["seed"], stop=tuple(sp.get("stop") or ()))
    if soak.json_output:
        params["json_schema"] = ANY_JSON_OBJECT
    return [TokenizedGenerateReq(f"r{i}-{j}", ids, SamplingParams(**params), stream=soak.stream)
            for j in range(soak.n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--report", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--long-words", type=int, default=400)
    ap.add_argument("--model", default=None)
    ap.add_argument("--kv-mb", type=int, default=256)
    ap.add_argument("--trim-every", type=float, default=0.0,
                    help="trim the heap as the scheduler process does (jackfield.server.heap), at most "
                         "every this many seconds (0: never)")
    ap.add_argument("--no-tracemalloc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sched, _ = build_scheduler(settings_for(model=args.model, device="cpu", kv_cache_bytes=args.kv_mb << 20),
                               progress=False)
    tok = sched.tokenizer
    rng = random.Random(0)
    opt = MixOptions(max_tokens=args.max_tokens, long_prompt_words=args.long_words, grammar=True, abort_rate=0.1)
    live: dict[str, int] = {}          # rid -> soak index
    groups: dict[int, set[str]] = {}   # soak index -> rids not finished
    abort_at: dict[int, int] = {}      # soak index -> step at which the client aborts
    sent = done = steps = 0
    first = None
    t0 = time.time()
    heap = HeapTrimmer(interval_s=args.trim_every)
    if not args.no_tracemalloc:
        tracemalloc.start(8)

    def take(outs):
        nonlocal done
        for batch in outs:
            for o in getattr(batch, "outputs", ()):
                if o.finished is not None and o.rid in live:
                    g = live.pop(o.rid)
                    groups[g].discard(o.rid)
                    if not groups[g]:
                        del groups[g]
                        abort_at.pop(g, None)
                        done += 1
                        if done % args.report == 0:
                            report()

    def report():
        nonlocal first
        gc.collect()
        snap = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        counts = type_counts()
        heap = tracemalloc.get_traced_memory()[0] / 2**20 if snap else 0.0
        mi = malloc_info()
        print(f"{done:5d} done  steps {steps:6d}  rss {rss_mb():8.1f} MB  py-heap {heap:7.1f} MB  "
              f"malloc: arena {mi.arena / 2**20:7.1f} used {mi.uordblks / 2**20:7.1f} free {mi.fordblks / 2**20:7.1f} "
              f"mmap {mi.hblkhd / 2**20:7.1f} MB  "
              f"objects {sum(counts.values()):8d}  tree-cached {sched.tree_cache.evictable_size():6d}  "
              f"{time.time() - t0:6.0f} s  cpu user {os.times().user:6.0f} s sys {os.times().system:5.0f} s",
              flush=True)
        if first is None:
            first = (snap, counts)
        else:
            last.clear()
            last.extend([snap, counts])

    last: list = []
    while done < args.requests:
        while len(groups) < args.concurrency and sent < args.requests:
            soak = make_request(rng, opt)
            for m in to_reqs(sent, soak, tok, args.max_tokens):
                live[m.rid] = sent
                groups.setdefault(sent, set()).add(m.rid)
                take(sched.handle(m))
            if soak.drop_after is not None or soak.abort_after_s is not None:
                abort_at[sent] = steps + rng.randint(1, 6)
            sent += 1
        for g, at in list(abort_at.items()):
            if steps >= at and g in groups:
                for rid in list(groups[g]):
                    take(sched.handle(AbortReq(rid)))
        if sched.has_work():
            take(sched.step())
            steps += 1
            heap.worked()
        if args.trim_every:
            heap.maybe_trim()
    if first and last and first[0] is not None:
        print("\ntracemalloc: top growth between the first and the last report")
        for stat in last[0].compare_to(first[0], "traceback")[:12]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+6d} blocks")
            for line in stat.traceback.format()[-6:]:
                print("     ", line)
    if first and last:
        diff = last[1] - first[1]
        print("\nobject types that grew:", diff.most_common(15))
    print("scheduler state:", dict(waiting=len(sched.waiting), running=len(sched.running) if sched.running else 0,
                                   grammar_queue=len(sched.grammars.queue), grammar_cache=len(sched.grammars._cache),
                                   finished_out=len(sched.finished_out), leaving=len(sched.leaving)))


if __name__ == "__main__":
    main()
