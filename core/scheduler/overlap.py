"""Launchers of the overlap scheduler: start a ForwardJob now, collect its result later.

Both run jobs strictly in launch order, which is what makes the overlap safe: KV slots the scheduler
frees while a job runs can only be written again by a later job.

- `ForwardWorker` (CPU): a dedicated thread runs the jobs from a queue. PyTorch releases the GIL
  inside its ops, so the scheduler thread plans the next batch and processes the previous result
  while the forward runs.
- `StreamLauncher` (CUDA): no thread. `launch` enqueues the forward and sampling on a forward stream
  (after the scheduler stream's pending work, i.e. the job's table writes) and an asynchronous copy of
  the tokens to pinned host memory; the kernels run while the scheduler thread goes on. `wait`
  synchronizes on an event recorded after the copy.

Grammar-constrained jobs sample late (SGLang's delayed sampling): their mask needs the previous
job's tokens accepted, which happens while this job's forward runs. The scheduler fills the job's
StepMask and then calls `mask_ready()` on its pending result. The forward worker simply waits for
the mask between forward and sampling; the stream launcher enqueues only the forward at launch and
the sampling in `mask_ready()`.

Once waited for, a pending result tells how long its job ran (`device_seconds`: CUDA events around
the job on the forward stream, the worker thread's own clock on the CPU), which the late launch
(launch_clock.py) uses to predict when the running job ends.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
import weakref

import torch

from jackfield.scheduler.forward_job import ForwardOutput, StepResult, step_result


class PendingResult:
    def __init__(self):
        self._done = threading.Event()
        self._value = None
        self._error: BaseException | None = None
        self.device_seconds: float | None = None  # how long the job itself ran, once waited for

    def set(self, value, seconds: float | None = None) -> None:
        self._value, self.device_seconds = value, seconds
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def mask_ready(self) -> None:
        """Nothing to do: the worker thread waits for the job's mask itself."""

    def wait(self) -> StepResult:
        """Block until the job ran; return its result or raise its exception."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class ForwardWorker:
    """A thread that calls `fn(job)` (returning a StepResult) for every launched job, in order."""

    def __init__(self, fn, name: str = "jackfield-forward"):
        self._fn = fn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(fn, self._queue), name=name, daemon=True)
        self._thread.start()

    def launch(self, job) -> PendingResult:
        pending = PendingResult()
        self._queue.put((job, pending))
        return pending

    @staticmethod
    def _run(fn, jobs: queue.SimpleQueue) -> None:
        while True:
            item = jobs.get()
            if item is None:
                return
            job, pending = item
            try:
                start = time.perf_counter()
                value = fn(job)
                pending.set(value, time.perf_counter() - start)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler thread, which re-raises it
                pending.fail(exc)
            del item, job, pending

    def close(self) -> None:
        """Stop the thread after the jobs already launched."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def close_with(self, owner) -> None:
        """Stop the thread when `owner` is garbage collected (the thread holds no reference to it)."""
        weakref.finalize(owner, self._queue.put, None)


class CudaPending:
    def __init__(self, launcher: StreamLauncher, job, forwarded=None, start: torch.cuda.Event | None = None):
        self._launcher, self._job, self._forwarded = launcher, job, forwarded
        self._event = self._host = None
        self._start = start
        self.device_seconds: float | None = None  # how long the job ran on the device, once waited for

    def sampled(self, event: torch.cuda.Event, host) -> CudaPending:
        self._event, self._host, self._job, self._forwarded = event, host, None, None
        return self

    def mask_ready(self) -> None:
        """Enqueue the delayed sampling of a grammar job (its StepMask is filled)."""
        if self._event is None:
            self._launcher.sample(self, self._job, self._forwarded)

    def wait(self) -> StepResult:
        self.mask_ready()
        self._event.synchronize()
        if self._start is not None:
            self.device_seconds, self._start = self._start.elapsed_time(self._event) / 1000.0, None
        return step_result(self._host)


class _HostOutput:
    """Pinned host copies of a ForwardOutput's tensors (`.sample`, `.prompt`), filled asynchronously."""

    def __init__(self, out):
        self.sample = _pinned_copy(out.sample)
        self.prompt = _pinned_copy(out.prompt) if out.prompt is not None else None
        self._device = out  # keep the device tensors alive until the copy is done


def _pinned_copy(obj):
    """The dataclass `obj` with each tensor field replaced by a pinned host copy (asynchronous)."""
    copies = {}
    for f in dataclasses.fields(obj):
        t = getattr(obj, f.name)
        if isinstance(t, torch.Tensor):
            copies[f.name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            copies[f.name].copy_(t, non_blocking=True)
    return dataclasses.replace(obj, **copies)


class StreamLauncher:
    """Launches `forward_fn(job)` (returning the logits and the prompt readout) and
    `sample_fn(job, logits)` (returning device tensors) on a forward stream, from the caller's thread."""

    def __init__(self, forward_fn, sample_fn, device: torch.device):
        self._forward, self._sample = forward_fn, sample_fn
        self._stream = torch.cuda.Stream(device)

    def launch(self, job) -> CudaPending:
        self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        start = torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self._stream):
            start.record()
            forwarded = self._forward(job)
        pending = CudaPending(self, job, forwarded, start)
        if job.mask is None:
            self.sample(pending, job, forwarded)
        return pending

    def sample(self, pending: CudaPending, job, forwarded) -> None:
        logits, prompt = forwarded
        self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))  # the mask's copy
        bitmask = job.mask.wait() if job.mask is not None else None
        if bitmask is not None:
            bitmask.record_stream(self._stream)  # copied on the scheduler stream, read on this one
        with torch.cuda.stream(self._stream):
            host = _HostOutput(ForwardOutput(self._sample(job, logits), prompt))
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        pending.sampled(event, host)

    def close(self) -> None:
        self._stream.synchronize()

    def close_with(self, owner) -> None:
        """Nothing to stop: the stream launcher owns no thread (ForwardWorker's counterpart)."""


def make_launcher(device: torch.device, forward_fn, sample_fn, run_fn):
    """StreamLauncher on CUDA, ForwardWorker elsewhere."""
    if device.type == "cuda":
        return StreamLauncher(forward_fn, sample_fn, device)
    return ForwardWorker(run_fn)
