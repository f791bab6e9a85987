"""The scheduler and detokenizer process loops, in-process with inproc ZMQ sockets and fakes."""
from __future__ import annotations

import itertools
import threading
import time

import zmq

from jackfield.io_struct import (AbortReq, BatchOutput, FinishReason, GetStatsReq, ReqOutput, StatsOut,
                                 TokenizedGenerateReq)
from jackfield.sampling.params import SamplingParams
from jackfield.server.detokenizer_process import DetokenizerManager
from jackfield.server.heap import HeapTrimmer
from jackfield.server.messages import ControlFailed, RegisterReq
from jackfield.server.scheduler_process import SchedulerLoop


class FakeScheduler:
    """Finishes each request after one step; `fail_steps` steps raise first."""

    def __init__(self, fail_steps: int = 0, fail_handle: bool = False):
        self.waiting: list[str] = []
        self.fail_steps, self.fail_handle = fail_steps, fail_handle
        self.aborted_with: list[str] = []
        self.fatal = None  # the real one's reason to stop (tensor parallelism)

    def handle(self, msg):
        if self.fail_handle:
            raise RuntimeError("plugin exploded")
        if isinstance(msg, TokenizedGenerateReq):
            self.waiting.append(msg.rid)
        return []

    def has_work(self) -> bool:
        return bool(self.waiting)

    def launch_deadline(self):
        return None

    def step(self):
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("kernel exploded")
        rids, self.waiting = self.waiting, []
        return [BatchOutput([ReqOutput(r, [7], FinishReason("length"), 3, 1, 0) for r in rids])]

    def recover(self, exc: Exception):
        """The real one aborts only the request at fault; here every request is."""
        message = f"internal error: {type(exc).__name__}: {exc}"
        self.aborted_with.append(message)
        rids, self.waiting = self.waiting, []
        return [BatchOutput([ReqOutput(r, [], FinishReason("abort", message=message), 3, 0, 0) for r in rids])]


LOOP_IDS = itertools.count()


def make_loop(scheduler, heap: HeapTrimmer | None = None):
    ctx = zmq.Context.instance()
    name = f"inproc://sched-{next(LOOP_IDS)}"  # (an id() of a collected scheduler can come back)
    into, recv = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    recv.bind(name + "-in")
    into.connect(name + "-in")
    send, out = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    out.bind(name + "-out")
    send.connect(name + "-out")
    return SchedulerLoop(scheduler, recv, send, idle_poll_ms=10, heap=heap), into, out


def drain(sock) -> list:
    msgs = []
    while sock.poll(100):
        msgs.append(sock.recv_pyobj())
    return msgs


def req(rid: str) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid, [1, 2, 3], SamplingParams(stop=("b",)))


def test_registration_precedes_outputs():
    loop, into, out = make_loop(FakeScheduler())
    into.send_pyobj(req("a"))
    loop.run_once()
    msgs = drain(out)
    assert isinstance(msgs[0], RegisterReq) and msgs[0].rid == "a" and msgs[0].sampling_params.stop == ("b",)
    assert isinstance(msgs[1], BatchOutput) and msgs[1].outputs[0].rid == "a"


def test_the_loop_trims_the_heap_after_a_step_once_outputs_are_sent():
    trims = []  # at each trim: how many messages had been sent
    heap = HeapTrimmer(interval_s=0.0, trim=lambda pad: trims.append(len(drain(out))))
    loop, into, out = make_loop(FakeScheduler(), heap)
    loop.run_once()
    assert trims == []  # idle, no step: nothing to give back
    into.send_pyobj(req("a"))
    loop.run_once()
    assert trims == [2]  # after the registration and the output went out
    loop.run_once()
    assert trims == [2]


def test_a_failing_step_aborts_the_batch_and_the_loop_goes_on():
    sched = FakeScheduler(fail_steps=1)
    loop, into, out = make_loop(sched)
    into.send_pyobj(req("a"))
    loop.run_once()
    aborted = [m for m in drain(out) if isinstance(m, BatchOutput)][0].outputs[0]
    assert aborted.finished.kind == "abort" and "kernel exploded" in aborted.finished.message
    into.send_pyobj(req("b"))
    loop.run_once()
    done = [m for m in drain(out) if isinstance(m, BatchOutput)][0].outputs[0]
    assert done.rid == "b" and done.finished.kind == "length"


def test_a_failing_handle_fails_only_that_message():
    loop, into, out = make_loop(FakeScheduler(fail_handle=True))
    into.send_pyobj(req("a"))
    into.send_pyobj(GetStatsReq())
    into.send_pyobj(AbortReq("zzz"))
    loop.run_once()
    msgs = drain(out)
    failed = [m for m in msgs if isinstance(m, BatchOutput)][0].outputs[0]
    assert failed.rid == "a" and failed.finished.kind == "abort" and "plugin exploded" in failed.finished.message
    control = [m for m in msgs if isinstance(m, ControlFailed)]
    assert len(control) == 1 and control[0].request == "GetStatsReq"


class CharTokenizer:
    """Token id = code point; enough for RequestText."""

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(chr(i) for i in ids)


def test_detokenizer_holds_back_and_trims_stop_strings():
    det = DetokenizerManager(CharTokenizer())
    assert det.handle(RegisterReq("r", SamplingParams(stop=("END",)))) is None

    def feed(text: str, finished=None) -> str:
        batch = det.handle(BatchOutput([ReqOutput("r", [ord(c) for c in text], finished, 1, 1, 0)]))
        return batch.outputs[0].text

    assert feed("hello E") == "hello "      # "E" may start "END": held back
    assert feed("N") == ""
    assert feed("D!", FinishReason("stop", "END")) == ""
    assert "r" not in det.states            # state dropped once finished
    stats = StatsOut(0, 0, 0, 10, 0.0, 0.0, 0.0)
    assert det.handle(stats) is stats       # control replies pass through unchanged


def test_detokenizer_survives_a_bad_request():
    class Exploding(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            raise ValueError("bad ids")

    det = DetokenizerManager(Exploding())
    det.handle(RegisterReq("r", SamplingParams()))
    out = det.handle(BatchOutput([ReqOutput("r", [1], FinishReason("length"), 1, 1, 0)]))
    assert out.outputs[0].text == "" and not det.states


class WaitingScheduler(FakeScheduler):
    """Has work, and a late-launch deadline `wait_s` after each question."""

    def __init__(self, wait_s: float):
        super().__init__()
        self.wait_s = wait_s
        self.steps = 0

    def has_work(self) -> bool:
        return True

    def launch_deadline(self):
        return time.monotonic() + self.wait_s

    def step(self):
        self.steps += 1
        return super().step()


def test_loop_waits_for_the_launch_deadline_then_steps():
    loop, into, out = make_loop(WaitingScheduler(0.3))
    start = time.monotonic()
    loop.run_once()
    assert time.monotonic() - start >= 0.25 and loop.scheduler.steps == 1


def test_a_request_ends_the_wait_for_the_launch_deadline():
    loop, into, out = make_loop(WaitingScheduler(5.0))
    timer = threading.Timer(0.05, into.send_pyobj, args=(req("late"),))
    timer.start()
    start = time.monotonic()
    loop.run_once()
    timer.join()
    assert time.monotonic() - start < 2.0  # woken by the request, not the 5 s deadline
    assert loop.scheduler.steps == 1
    assert any(isinstance(m, BatchOutput) and m.outputs[0].rid == "late" for m in drain(out))


def test_an_idle_only_trimmer_waits_for_the_scheduler_to_be_idle():
    trims = []
    heap = HeapTrimmer(interval_s=0.0, trim=lambda pad: trims.append(pad), idle_only=True)
    sched = WaitingScheduler(0.0)  # always has work
    loop, into, out = make_loop(sched, heap)
    loop.run_once()
    assert sched.steps == 1 and trims == []  # worked, but still busy: no pause for a trim
    sched.has_work = lambda: False
    loop.run_once()
    assert trims == [0]


def test_the_loop_freezes_start_up_objects_once_idle_after_its_first_work():
    frozen = []
    loop, into, out = make_loop(FakeScheduler())
    loop.freeze = lambda: frozen.append(len(drain(out)))
    loop.run_once()
    assert frozen == []  # no work yet: the warm-up has not run
    into.send_pyobj(req("a"))
    loop.run_once()
    assert frozen == [2]  # idle after the step, its outputs sent
    into.send_pyobj(req("b"))
    loop.run_once()
    assert frozen == [2] and loop.freeze is None


def test_freezing_exempts_the_objects_alive_then():
    import gc
    import subprocess
    import sys

    code = ("import gc; from jackfield.server.gc_freeze import freeze_startup_objects; keep = [[] for _ in range(1000)]; "
            "before = gc.get_freeze_count(); freeze_startup_objects('test'); print(before, gc.get_freeze_count())")
    before, after = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert before == 0 and after >= 1000
    assert gc.get_freeze_count() == 0  # (run in a child: this test process is never frozen)
