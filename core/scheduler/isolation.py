"""After a failed forward: fail the request at fault, not every request in flight.

A forward (or its planning) raised, say a plugin's kernel choking on one request's input. Every
request holding KV is then in an unknown state, so each is dropped (its KV freed, nothing cached).
Who is at fault:

* one request held KV: that one;
* exactly one *suspect* held KV: that one;
* otherwise nobody can tell: every holder becomes a suspect and goes back to the head of the
  waiting queue (its failure count goes up; at MAX_FAILURES it is aborted anyway).

Suspects are prefilled one at a time (admission.py lets no other new request join a suspect's
prefill), and a suspect stops being one once its prefill has completed, so the next failure of a
shared forward names one request. Requeued requests keep the tokens they produced and recompute
their KV, exactly like a retraction: their clients see no gap. Waiting requests are not touched.
The request at fault finishes with an abort whose message names the error (and the plugin that
raised it), answered with HTTP 500.
"""
from __future__ import annotations

import logging

from jackfield.io_struct import FinishReason

log = logging.getLogger(__name__)
MAX_FAILURES = 3


def recover_from_failure(sched, message: str) -> list:
    """Drop every request holding KV, abort the one at fault, requeue the others; returns the outputs."""
    reqs = sched.drop_holders()
    suspects = [r for r in reqs if r.suspect]
    if len(reqs) == 1 or len(suspects) == 1:
        guilty = reqs if len(reqs) == 1 else suspects
    else:
        for r in reqs:
            r.suspect = True
            r.failures += 1
        guilty = [r for r in reqs if r.failures >= MAX_FAILURES]
    requeued = sorted((r for r in reqs if r not in guilty), key=lambda r: r.arrival_seq)
    for r in guilty:
        r.finished_reason = FinishReason("abort", message=message, status=500)
    sched.finished_out += guilty
    sched.waiting[:0] = requeued
    sched.stats.isolated_failures += 1
    log.error("a forward failed (%s): %d request(s) aborted, %d requeued to find the one at fault",
              message, len(guilty), len(requeued))
    return sched._emit()
