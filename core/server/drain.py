"""Graceful drain: on SIGTERM (or Ctrl-C) stop admitting, let in-flight requests finish, then exit.

1. `DrainingServer` (uvicorn's Server) turns the first SIGTERM/SIGINT into `Drain.request()`
   instead of closing the listening socket; a second signal exits at once.
2. While draining, `DrainGate` answers every new request with 503 and `Retry-After` (so a client
   or load balancer retries elsewhere); /health reports the drain with 503 and /metrics stays open.
   Running OpenAI batches (/v1/batches) are cancelled at once: a batch is no request in flight.
3. `Drain.run` waits until no admitted HTTP request is left, at most `shutdown_timeout` seconds;
   whatever is still running is then aborted: each request ends with finish reason `abort` and a
   503 error saying the server shut down. Then uvicorn stops, and launch.py stops every child.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import uvicorn
from jackfield.server.errors import APIError, error_response

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
OPEN_PATHS = ("/health", "/metrics")
POLL_S = 0.05
ABORTED_GRACE_S = 2.0  # for the aborted requests' last bytes to reach their clients


class DrainGate:
    """ASGI middleware: counts admitted requests (`state.active_requests`); 503 while draining."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.state.draining:
            err = APIError(503, "the server is shutting down and admits no new requests; retry on another instance "
                                "or after the restart", code="shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})
            return await error_response(err, scope["path"])(scope, receive, send)
        self.state.active_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.active_requests -= 1


@dataclass
class DrainResult:
    in_flight: int     # admitted requests when the drain began
    completed: int     # of those, finished within shutdown_timeout
    aborted: int       # of those, still running at the deadline and aborted
    seconds: float


class Drain:
    def __init__(self, state, shutdown_timeout: float):
        self.state, self.timeout = state, shutdown_timeout
        self._requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.result: DrainResult | None = None

    def request(self) -> None:
        """Start draining; safe to call from a signal handler."""
        self._loop.call_soon_threadsafe(self._requested.set)

    async def run(self, server: uvicorn.Server) -> None:
        await self._requested.wait()
        st, tm = self.state, self.state.tokenizer_manager
        st.draining = True
        start = time.monotonic()
        if getattr(st, "batches", None) is not None:  # running batches are cancelled (their finished lines are kept)
            await st.batches.close()
        in_flight = st.active_requests
        print(f"jackfield: shutting down: draining {in_flight} request(s) in flight "
              f"(up to {self.timeout:g} s)", flush=True)
        await self._until_idle(start + self.timeout)
        left = st.active_requests
        if tm.num_in_flight:
            tm.fail_all(f"the server shut down before this request finished (shutdown_timeout {self.timeout:g} s)")
            await self._until_idle(time.monotonic() + ABORTED_GRACE_S)
        self.result = DrainResult(in_flight, max(in_flight - left, 0), left, time.monotonic() - start)
        r = self.result
        print(f"jackfield: drained in {r.seconds:.1f} s: {r.completed} of {r.in_flight} request(s) completed, "
              f"{r.aborted} aborted", flush=True)
        server.should_exit = True

    async def _until_idle(self, deadline: float) -> None:
        while self.state.active_requests and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose first SIGINT/SIGTERM starts a drain (`on_signal`); a second exits at once."""

    on_signal = None

    def handle_exit(self, sig, frame) -> None:
        if self.on_signal is not None and not self.should_exit:
            on_signal, self.on_signal = self.on_signal, None
            on_signal()
            return
        self.should_exit = self.force_exit = True
