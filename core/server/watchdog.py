"""Fail fast: a dead engine process or a stuck scheduler brings the server down, loudly and at once.

* Death: each child's `sentinel` (a file descriptor that becomes readable the moment the process
  ends) is watched by the event loop, so a `kill -9` is noticed within milliseconds, not a poll.
* Stuck: the scheduler loop writes `time.monotonic()` into a shared `Heartbeat` at the top of every
  iteration (an idle iteration lasts at most IDLE_POLL_MS). When the beat is older than
  `watchdog_timeout`, the scheduler is stuck inside one iteration (one forward or one message): the
  watchdog has it dump every thread's stack to the log (SIGUSR1, faulthandler), then kills it.

Either way `on_failure(why)` runs once: launch.py logs which child and why, turns /health
unhealthy, fails every request in flight with 503 and stops the server, which exits with 1 after
stopping the remaining children.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Callable

log = logging.getLogger(__name__)
STACK_DUMP_WAIT_S = 0.5


class Heartbeat:
    """A monotonic timestamp shared with a child process (0.0 until the first beat)."""

    def __init__(self, ctx):
        self._value = ctx.Value("d", 0.0, lock=False)

    def beat(self) -> None:
        self._value.value = time.monotonic()

    def age(self) -> float | None:
        """Seconds since the last beat; None before the first."""
        last = self._value.value
        return None if last == 0.0 else time.monotonic() - last


class EngineWatchdog:
    def __init__(self, procs, heartbeat: Heartbeat, timeout: float, on_failure: Callable[[str], None]):
        self.procs, self.heartbeat, self.timeout, self.on_failure = procs, heartbeat, timeout, on_failure
        self.failed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for proc in self.procs.processes:
            self._loop.add_reader(proc.sentinel, self._ended, proc)
        self._task = self._loop.create_task(self._watch_progress(), name="scheduler-watchdog")

    def stop(self) -> None:
        """Stop watching (before the children are stopped on purpose)."""
        self._stop_death_watch()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _stop_death_watch(self) -> None:
        if self._loop is not None:
            for proc in self.procs.processes:
                self._loop.remove_reader(proc.sentinel)

    def _fail(self, why: str) -> None:
        if not self.failed:
            self.failed = True
            self.stop()
            self.on_failure(why)

    def _ended(self, proc) -> None:
        proc.join(1.0)  # the sentinel fires as the process exits; its status follows at once
        self._fail(self.procs.death_reason(proc))

    async def _watch_progress(self) -> None:
        period = min(0.25, self.timeout / 4)
        while True:
            await asyncio.sleep(period)
            age = self.heartbeat.age()
            if age is not None and age > self.timeout:
                await self._stuck(age)
                return

    async def _stuck(self, age: float) -> None:
        proc = self.procs.scheduler
        why = (f"the {proc.name.removeprefix('jackfield-')} process is stuck: one iteration of its loop has run for "
               f"{age:.1f} s (watchdog_timeout {self.timeout:g} s); its stacks are dumped above and it was killed")
        self.failed = True  # its death below is this failure, not a second one
        self._stop_death_watch()
        log.error("%s", why.replace("are dumped above and it was killed", "follow; then it is killed"))
        try:
            os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: every thread's stack to stderr
            await asyncio.sleep(STACK_DUMP_WAIT_S)
            proc.kill()
            proc.join(1.0)
        except (ProcessLookupError, OSError):
            pass
        self.on_failure(why)
