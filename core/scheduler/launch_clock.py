"""When to plan the next forward under overlap: late enough that a request arriving meanwhile joins
it, early enough that the device never waits.

Under overlap the scheduler launches forward N+1 while N runs. Planned at once, N+1 is fixed for the
whole of N's run, so a request that arrives during N waits for N and for N+1 before its prefill
starts: one and a half steps on average. Planned just before N ends, N+1 takes it in, and the wait
falls to half a step.

`LaunchClock` predicts the end of the running forward when it is a plain decode step: it started
when the job before it finished (or at its own launch, if later) and runs for about as long as the
recent decode steps of its batch size ran (the shortest device time, `PendingResult.device_seconds`,
of the last `WINDOW`: a slow outlier, such as a first step that pays for a lazy initialization,
must not hold the next plan back while the device idles), or,
for a size not measured yet, those of the largest measured size below it down to half of it (a
smaller batch is not slower, so the guess errs early). `launch_at` is that end less a margin: twice
the host time a plan and launch took, plus a fixed part and a share of the step. Without a
measurement, and for prefills, there is no deadline (the next forward is planned at once, as
without the late launch).
"""
from __future__ import annotations

from collections import deque

EMA = 0.3             # weight of the newest measurement of the host's plan-and-launch time
WINDOW = 5            # decode steps remembered per batch size
MARGIN_S = 0.0005     # fixed part of the margin
MARGIN_SHARE = 0.05   # part of the predicted step added to the margin


class LaunchClock:
    def __init__(self):
        self.decode_s: dict[int, deque] = {}  # batch size -> device seconds of its last decode steps
        self.host_s = 0.0                      # seconds from planning a forward to its launch
        self.done_at: float | None = None      # when the last waited-for job finished
        self.launched_at: float | None = None  # when the running job was launched
        self.running_batch: int | None = None  # its decode batch size; None for a job with a prefill

    def launched(self, now: float, host_s: float, decode_batch: int | None) -> None:
        """A job was launched at `now`, `host_s` after its planning began; `decode_batch` is its
        batch size when it is a plain decode step, else None."""
        self.host_s = host_s if self.launched_at is None else (1 - EMA) * self.host_s + EMA * host_s
        self.launched_at, self.running_batch = now, decode_batch

    def finished(self, now: float, device_s: float | None, decode_batch: int | None) -> None:
        """The job waited for (launched before the running one) finished by `now`, after running
        `device_s` seconds on the device."""
        self.done_at = now
        if device_s is None or decode_batch is None:
            return
        self.decode_s.setdefault(decode_batch, deque(maxlen=WINDOW)).append(device_s)

    def step_s(self, batch: int) -> float | None:
        """The predicted device seconds of a decode step of `batch` requests (None: no guess)."""
        if batch not in self.decode_s:
            below = [b for b in self.decode_s if batch <= 2 * b and b < batch]
            if not below:
                return None
            batch = max(below)
        return min(self.decode_s[batch])

    def launch_at(self) -> float | None:
        """When to plan the next forward, if the running one is a measured decode step; else None."""
        if self.running_batch is None or self.launched_at is None:
            return None
        step = self.step_s(self.running_batch)
        if step is None:
            return None
        start = self.launched_at if self.done_at is None else max(self.done_at, self.launched_at)
        return start + step - (MARGIN_S + 2 * self.host_s + MARGIN_SHARE * step)
