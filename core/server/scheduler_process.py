"""The scheduler subprocess: loads the model, then turns requests into batches until it is stopped.

Loop: wait on the input socket while idle (a short poll, never a busy spin) or, under overlap,
until just before the running decode step ends (`Scheduler.launch_deadline`, the late launch); take
every pending message without blocking, `handle` each, then run one `step()` when there is work. Every
output, control replies included, goes to the detokenizer, which forwards what it does not decode.
Idle for the first time after some work (the server's warm-up), it freezes its start-up objects
out of garbage collection (gc_freeze.py).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import zmq

from jackfield.config import Settings
from jackfield.engine_loop import TOKENIZER_FILES, build_scheduler
from jackfield.io_struct import (BatchOutput, FinishReason, LoRAUpdateOut, ReqOutput, TokenizedEmbeddingReq,
                                 TokenizedGenerateReq)
from jackfield.server.gc_freeze import freeze_startup_objects
from jackfield.server.heap import HeapTrimmer
from jackfield.server.ipc import PortArgs, exit_child, pull_socket, push_socket, setup_child
from jackfield.server.messages import ControlFailed, ReadyInfo, RegisterReq, StartupError

log = logging.getLogger(__name__)
IDLE_POLL_MS = 50


def run_scheduler_process(settings: Settings, ports: PortArgs, conn, heartbeat=None) -> None:
    """Process entry point. Reports `ReadyInfo` or `StartupError` over the pipe `conn`, then serves,
    beating `heartbeat` (watchdog.py) once per loop iteration."""
    setup_child("scheduler", settings.log_level)
    start = time.perf_counter()
    try:
        scheduler, info = build_scheduler(settings, progress=True, as_replica=True)
        tokenizer_path = _tokenizer_path(settings) if scheduler.tokenizer is not None else None
    except Exception as exc:
        log.debug("model load failed", exc_info=True)
        conn.send(StartupError(_startup_error(exc)))
        conn.close()
        sys.exit(1)
    ctx = zmq.Context()
    loop = SchedulerLoop(scheduler, pull_socket(ctx, ports.scheduler_input), push_socket(ctx, ports.detokenizer),
                         heartbeat=heartbeat, heap=HeapTrimmer(idle_only=scheduler.device.type == "cuda"),
                         freeze=lambda: freeze_startup_objects("scheduler"))
    conn.send(ReadyInfo(info, tokenizer_path, time.perf_counter() - start))
    conn.close()
    try:
        loop.run()
    except SystemExit:  # SIGTERM
        scheduler.close()
        exit_child(ctx, loop.recv, loop.send)
    # the engine cannot go on (a failed forward under tensor parallelism): its aborts are sent, and
    # this process exits 1 so that the server goes down as for a dead scheduler
    loop.recv.close(linger=0)
    loop.send.close(linger=5000)
    ctx.term()
    sys.exit(1)


def _startup_error(exc: Exception) -> str:
    """The error, naming the plugin whose code raised it."""
    from jackfield.plugin_faults import describe
    from jackfield.plugins import load_plugins

    try:
        pm, _ = load_plugins()
    except Exception:
        pm = None
    return describe(exc, pm)


def _tokenizer_path(settings: Settings) -> str:
    from jackfield.loader.source import resolve_model

    if settings.tokenizer:
        return settings.tokenizer
    model_dir = resolve_model(settings.model, settings.load_format).path  # a cache hit for GGUF files
    if not any((model_dir / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {model_dir}")
    return str(model_dir)


class SchedulerLoop:
    """Drives one Scheduler from a PULL socket and pushes everything it produces to the detokenizer."""

    def __init__(self, scheduler, recv: zmq.Socket, send: zmq.Socket, idle_poll_ms: int = IDLE_POLL_MS,
                 heartbeat=None, heap: HeapTrimmer | None = None, freeze: Callable[[], None] | None = None):
        self.scheduler, self.recv, self.send = scheduler, recv, send
        self.idle_poll_ms = idle_poll_ms
        self.heartbeat = heartbeat
        self.heap = heap if heap is not None else HeapTrimmer()
        self.freeze = freeze  # called once, idle after the first work (the process: gc_freeze.py)
        self.worked = False   # ran a step since start-up

    def run(self) -> None:
        """Until the scheduler cannot go on (`Scheduler.fatal`, under tensor parallelism); SIGTERM
        ends it with SystemExit."""
        while self.scheduler.fatal is None:
            self.run_once()

    def run_once(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if not self.scheduler.has_work():
            self.recv.poll(self.idle_poll_ms, zmq.POLLIN)
        else:
            self._wait_for_launch()
        for msg in self._receive_all():
            self._handle(msg)
        if self.scheduler.has_work():
            self._step()
            self.heap.worked()
            self.worked = True
        # after the step's outputs went out: free heap pages back (heap.py)
        self.heap.maybe_trim(idle=not self.scheduler.has_work())
        if self.freeze is not None and self.worked and not self.scheduler.has_work():
            # idle after the first work (the server's warm-up): what compiling and the first
            # forwards built lives as long as the process
            self.freeze()
            self.freeze = None

    def _wait_for_launch(self) -> None:
        """Late launch: wait on the socket until the scheduler's launch deadline, so that a request
        arriving meanwhile joins the next forward; a message ends the wait at once."""
        deadline = self.scheduler.launch_deadline()
        if deadline is not None:
            left_ms = int((deadline - time.monotonic()) * 1000)  # rounded down: wakes early, never late
            if left_ms > 0:
                self.recv.poll(left_ms, zmq.POLLIN)

    def _receive_all(self) -> list:
        msgs = []
        while True:
            try:
                msgs.append(self.recv.recv_pyobj(zmq.NOBLOCK))
            except zmq.Again:
                return msgs

    def _handle(self, msg) -> None:
        if isinstance(msg, TokenizedGenerateReq):
            self.send.send_pyobj(RegisterReq(msg.rid, msg.sampling_params))
        try:
            outs = self.scheduler.handle(msg)
        except Exception as exc:
            log.exception("scheduler failed to handle %s", type(msg).__name__)
            outs = _failure_reply(msg, f"internal error: {type(exc).__name__}: {exc}")
        for out in outs:
            self.send.send_pyobj(out)

    def _step(self) -> None:
        try:
            outs = self.scheduler.step()
        except Exception as exc:  # a failing forward fails the request at fault, not the server
            log.exception("scheduler step failed")
            outs = self.scheduler.recover(exc)
        for out in outs:
            self.send.send_pyobj(out)


def _failure_reply(msg, message: str) -> list:
    if isinstance(msg, (TokenizedGenerateReq, TokenizedEmbeddingReq)):
        reason = FinishReason("abort", message=message)
        return [BatchOutput([ReqOutput(msg.rid, [], reason, len(msg.input_ids), 0, 0)])]
    if hasattr(msg, "rid"):
        return []
    if hasattr(msg, "request_id"):  # LoRA load / unload: answered by id
        return [LoRAUpdateOut(msg.request_id, False, 500, message)]
    return [ControlFailed(type(msg).__name__, message)]
