"""Can a prefill chunk's GEMMs and a decode step's attention run on the H100 at the same time?

NanoFlow's premise: compute-bound GEMMs and memory-bound decode attention, given separate SMs, take
about as long together as the longer of the two. This probe measures it on the 8B shapes.

  A: the decode attention of one batch-256 step at context 640, 32 layers: the Triton decode kernel
     over 8 KV pools in turn (5.4 GB, so the KV comes from DRAM)
  G: the linear layers of one layer of a 16,384-token prefill chunk (qkv, o_proj, gate_up, down; cuBLAS)

Each is timed alone, one after the other on one stream, side by side on two plain streams, and side
by side with one of them confined to a CUDA green context of N SMs (torch.cuda.green_contexts) while
the other may use any SM. (Two green contexts are not used together: this API does not say that
their SMs are disjoint.)

    python3 benchmarks/studies/overlap_probe.py --out probe.json [--sms 16,32,48]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: attention_kernels
from attention_kernels import DTYPE, HEAD_DIM, HEADS, Setup, available_backends, save_rows
from gemm_power import ROWS, linear_layers
from jackfield.sdk import AttentionLayerInfo, ForwardMode

BATCH, CONTEXT, LAYERS, POOLS = 256, 640, 32, 8


def attention_step():
    """A: 32 decode-attention calls over POOLS pools (one step of the 8B model's attention)."""
    cls = available_backends(["triton"])["triton"]
    layer = AttentionLayerInfo(0, HEADS, 8, HEAD_DIM, HEAD_DIM ** -0.5)
    calls = []
    for _ in range(POOLS):
        setup = Setup(BATCH, CONTEXT, 1)
        backend = cls(setup.runtime())
        fb = setup.batch_of(backend, ForwardMode.DECODE, 1)
        q = torch.randn(BATCH, HEADS * HEAD_DIM, dtype=DTYPE, device="cuda")
        backend.init_forward_metadata(fb)
        calls.append(lambda b=backend, q=q, fb=fb: b.forward_decode(q, layer, fb))
    return lambda: [calls[i % POOLS]() for i in range(LAYERS)]


def prefill_gemms():
    """G: one layer's four linear layers at 16,384 rows."""
    layers = list(linear_layers(ROWS).values())
    return lambda: [F.linear(x, w) for x, w in layers]


def timed(jobs: list[tuple[object, torch.cuda.Stream]], reps: int = 5) -> float:
    """Median ms from a common start until every (fn, stream) job is done; jobs on one stream run in order."""
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # hold the device so that every stream's work is queued before any starts
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        ends = []
        for fn, stream in jobs:
            stream.wait_event(start)
            with torch.cuda.stream(stream):
                fn()
                ends.append(torch.cuda.Event(enable_timing=True))
                ends[-1].record()
        torch.cuda.synchronize()
        times.append(max(start.elapsed_time(e) for e in ends))
    return sorted(times[1:])[reps // 2]


def green_stream(num_sms: int, keep: list) -> torch.cuda.Stream:
    """A stream whose kernels run on `num_sms` SMs only; its green context goes into `keep` (the
    context is destroyed with its Python object)."""
    from torch.cuda.green_contexts import GreenContext

    ctx = GreenContext.create(num_sms=num_sms, device_id=torch.cuda.current_device())
    keep.append(ctx)
    if hasattr(ctx, "Stream"):
        return ctx.Stream()
    ctx.set_context()
    try:
        return torch.cuda.Stream()
    finally:
        ctx.pop_context()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sms", default="16,24,32,48", help="SMs of the attention's green context (G's: the rest)")
    p.add_argument("--out")
    args = p.parse_args()
    total_sms = torch.cuda.get_device_properties(0).multi_processor_count
    a, g = attention_step(), prefill_gemms()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    contexts: list = []
    rows = [{"case": "A alone", "ms": timed([(a, s1)])}, {"case": "G alone", "ms": timed([(g, s1)])}]
    rows.append({"case": "A then G, one stream", "ms": timed([(a, s1), (g, s1)])})
    rows.append({"case": "A and G, two plain streams", "ms": timed([(a, s1), (g, s2)])})
    for n in (int(v) for v in args.sms.split(",")):
        try:
            sa, sg = green_stream(n, contexts), green_stream(total_sms - n, contexts)
        except Exception as exc:  # noqa: BLE001 - a report, not a crash: green contexts are beta
            rows.append({"case": f"green contexts of {n} and {total_sms - n} SMs", "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows += [{"case": f"A alone on {n} SMs", "ms": timed([(a, sa)])},
                 {"case": f"G alone on {total_sms - n} SMs", "ms": timed([(g, sg)])},
                 {"case": f"A on {n} SMs, G on any", "ms": timed([(a, sa), (g, s2)])},
                 {"case": f"G on {total_sms - n} SMs, A on any", "ms": timed([(a, s1), (g, sg)])}]
    for r in rows:
        print(f"{r['case']:<40} " + (f"{r['ms']:8.2f} ms" if "ms" in r else r["error"]))
    save_rows(args.out, "studies/overlap_probe.py", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
