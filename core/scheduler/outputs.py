"""Output messages: incremental per-request token outputs and the StatsOut snapshot."""
from __future__ import annotations

import time

from jackfield.io_struct import BatchOutput, ReqOutput, StatsOut
from jackfield.scheduler.req import Req


def req_output(r: Req) -> ReqOutput:
    """The tokens (and logprobs) r produced since its last output message."""
    new = r.output_ids[r.sent_len:]
    lps = r.logprobs[r.sent_len:] if r.return_logprob else None
    first = r.sent_len == 0 and bool(new)
    r.sent_len = len(r.output_ids)
    spec = None
    if r.spec_verify_ct:
        spec = {"verify_ct": r.spec_verify_ct, "proposed": r.spec_proposed, "accepted": r.spec_accepted,
                "emitted": r.spec_emitted}
    out = ReqOutput(r.rid, new, r.finished_reason, len(r.origin_input_ids), len(r.output_ids),
                    max(r.cached_tokens, 0), lps, spec=spec)
    if first:
        out.timing = (r.received_at, r.scheduled_at or r.received_at, time.monotonic())
    if r.logprob_start_len >= 0 and not r.input_logprobs_sent and r.input_logprobs_done:
        out.input_logprobs, r.input_logprobs_sent = r.input_logprobs, True
    if r.embedding is not None and r.finished_reason is not None and r.finished_reason.kind != "abort":
        vec = r.embedding / len(r.origin_input_ids) if r.pooling == "mean" else r.embedding
        out.embedding = vec.tolist()
    return out


def collect_outputs(finished: list[Req], running, stream_interval: int) -> list[BatchOutput]:
    """Outputs of the finished requests, plus streamed increments of running ones."""
    outs = [req_output(r) for r in finished]
    if running is not None:
        for r in running.reqs:
            if r.stream and not r.finished and len(r.output_ids) - r.sent_len >= stream_interval:
                outs.append(req_output(r))
    return [BatchOutput(outs)] if outs else []


def stats_out(sched) -> StatsOut:
    pre, dec = sched.stats.rates()
    total = sched.runner.max_total_tokens
    cached = sched.tree_cache.evictable_size()
    used = total - sched.runner.allocator.available_size() - cached
    st = sched.stats
    sp = sched.spec.stats if sched.spec is not None else None
    spec = dict(spec_verify_steps=sp.verify_steps, spec_proposed=sp.proposed, spec_accepted=sp.accepted,
                spec_emitted=sp.emitted) if sp is not None else {}
    return StatsOut(num_running=len(sched.running) if sched.running else 0, num_waiting=len(sched.waiting),
                    kv_used_tokens=used, kv_total_tokens=total, cache_hit_rate=st.cache_hit_rate,
                    prefill_tokens_per_s=pre, decode_tokens_per_s=dec, total_prompt_tokens=st.prompt_tokens,
                    total_cached_tokens=st.cached_tokens, total_generated_tokens=st.generated_tokens,
                    kv_cached_tokens=cached, **spec)
