"""The two engine subprocesses (scheduler, detokenizer): start, wait for readiness, watch, stop.

Both are started with the "spawn" context at once, so the detokenizer imports its tokenizer library
while the scheduler loads the model. The scheduler answers over a pipe with ReadyInfo or
StartupError; the detokenizer then gets the tokenizer path over its own pipe and answers "ready".
"""
from __future__ import annotations

import logging
import multiprocessing as mp

from jackfield.config import Settings
from jackfield.server.detokenizer_process import run_detokenizer_process
from jackfield.server.ipc import PortArgs
from jackfield.server.messages import ReadyInfo, StartupError
from jackfield.server.scheduler_process import run_scheduler_process
from jackfield.server.watchdog import Heartbeat

log = logging.getLogger(__name__)
POLL_S = 0.2
STOP_TIMEOUT_S = 5.0


class StartupFailed(RuntimeError):
    """A subprocess could not start; the message says why."""


class EngineProcesses:
    def __init__(self, settings: Settings, ports: PortArgs):
        ctx = mp.get_context("spawn")
        self._sched_conn, sched_child = ctx.Pipe(duplex=False)
        self._detok_conn, detok_child = ctx.Pipe()
        self.heartbeat = Heartbeat(ctx)  # the scheduler loop's progress, read by the watchdog
        self.scheduler = ctx.Process(target=run_scheduler_process, args=(settings, ports, sched_child, self.heartbeat),
                                     name="jackfield-scheduler")
        self.detokenizer = ctx.Process(target=run_detokenizer_process, args=(settings, ports, detok_child),
                                       name="jackfield-detokenizer")
        self._child_ends = (sched_child, detok_child)

    @property
    def processes(self) -> list:
        return [self.scheduler, self.detokenizer]

    def start(self) -> None:
        for proc in self.processes:
            proc.start()
        for conn in self._child_ends:
            conn.close()

    def wait_ready(self) -> ReadyInfo:
        """Block until both processes are ready; raises StartupFailed with the reason otherwise."""
        ready = self._wait(self.scheduler, self._sched_conn)
        self._detok_conn.send(ready.tokenizer_path)
        self._wait(self.detokenizer, self._detok_conn)
        return ready

    def _wait(self, proc, conn):
        while not conn.poll(POLL_S):
            if not proc.is_alive():
                raise StartupFailed(f"the {_role(proc)} process exited with code {proc.exitcode} while starting")
        try:
            msg = conn.recv()
        except EOFError:
            proc.join(STOP_TIMEOUT_S)
            raise StartupFailed(f"the {_role(proc)} process exited with code {proc.exitcode} while starting") from None
        if isinstance(msg, StartupError):
            raise StartupFailed(msg.message)
        return msg

    def dead(self) -> str | None:
        """Why the engine is down, if a subprocess has died; None while both run."""
        for proc in self.processes:
            if proc.pid is not None and not proc.is_alive():
                return self.death_reason(proc)
        return None

    @staticmethod
    def death_reason(proc) -> str:
        return f"the {_role(proc)} process (pid {proc.pid}) died (exit code {_describe(proc.exitcode)})"

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after a grace period) and reap both processes."""
        for proc in self.processes:
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
        for proc in self.processes:
            if proc.pid is None:
                continue
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                log.warning("%s did not stop on SIGTERM; killing it", proc.name)
                proc.kill()
                proc.join(STOP_TIMEOUT_S)
        for conn in (self._sched_conn, self._detok_conn):
            conn.close()


def _role(proc) -> str:
    return proc.name.removeprefix("jackfield-")


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"{code}, killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return str(code)
