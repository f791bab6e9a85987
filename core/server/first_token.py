"""Where a request's time to first token goes: the stages of its path through the server.

    http          HTTP arrival -> sent to the scheduler, less `tokenize` (body parsing, validation, chat
                  template, the send)
    tokenize      the prompt's tokenization inside `http`
    to_scheduler  sent -> the scheduler took it in (ZMQ, and the scheduler finishing what it was doing)
    queue         taken in -> its first forward planned (waiting for memory, for a slot, for the
                  running forward under overlap)
    prefill       planned -> its first token sent by the scheduler (the prefill forward and sampling,
                  behind any forward already queued on the device)
    to_server     sent by the scheduler -> back in the server process (the detokenizer's hop)

The times come from one clock (`time.monotonic()`, shared by the server's processes on one host):
the server's HTTP middleware stamps `ARRIVED`, the tokenizer manager adds up its tokenizing in
`TOKENIZING` and stamps the send, the scheduler the rest (`ReqOutput.timing`). `/metrics` exports
them as `jackfield_first_token_stage_seconds{stage}`.
"""
from __future__ import annotations

from contextvars import ContextVar

STAGES = ("http", "tokenize", "to_scheduler", "queue", "prefill", "to_server")

# time.monotonic() when the HTTP request being handled arrived (set per request by the middleware)
ARRIVED: ContextVar[float | None] = ContextVar("jackfield_http_arrived", default=None)
# seconds the HTTP request being handled has spent in the tokenizer so far (reset by the middleware)
TOKENIZING: ContextVar[float] = ContextVar("jackfield_http_tokenizing", default=0.0)


def first_token_stages(arrived: float | None, sent: float, timing: tuple[float, float, float],
                       delivered: float, tokenizing: float = 0.0) -> dict[str, float]:
    """Seconds per stage (`http` and `tokenize` only when the request came over HTTP)."""
    received, scheduled, emitted = timing
    stages = {"to_scheduler": received - sent, "queue": scheduled - received, "prefill": emitted - scheduled,
              "to_server": delivered - emitted}
    if arrived is not None:
        stages["http"] = sent - arrived - tokenizing
        stages["tokenize"] = tokenizing
    return {name: max(seconds, 0.0) for name, seconds in stages.items()}
