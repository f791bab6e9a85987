"""TokenizerManager over real ipc:// sockets, with a fake engine thread on the other side."""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
import zmq

from jackfield.io_struct import (AbortReq, BatchOutput, FinishReason, GetStatsReq, ReqOutput, StatsOut,
                                 TokenizedGenerateReq)
from jackfield.sampling.params import SamplingParams
from jackfield.server.ipc import PortArgs, pull_socket, push_socket
from jackfield.server.metrics import ServerMetrics
from jackfield.server.tokenizer_manager import ServerUnavailable, TokenizerManager


class FakeEngine(threading.Thread):
    """Answers each request with two one-token increments ("a", then "b" + finish), stats with StatsOut;
    requests whose first input id is 0 never finish (to test abort)."""

    def __init__(self, ports: PortArgs):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.recv = pull_socket(self.ctx, ports.scheduler_input)
        self.send = push_socket(self.ctx, ports.tokenizer)
        self.seen: list = []

    def run(self) -> None:
        while True:
            msg = self.recv.recv_pyobj()
            self.seen.append(msg)
            if isinstance(msg, TokenizedGenerateReq):
                self.send.send_pyobj(BatchOutput([ReqOutput(msg.rid, [1], None, 3, 1, 2, text="a")]))
                if msg.input_ids[0] != 0:
                    self.send.send_pyobj(BatchOutput([ReqOutput(msg.rid, [2], FinishReason("length"), 3, 2, 2,
                                                                text="b")]))
            elif isinstance(msg, GetStatsReq):
                self.send.send_pyobj(StatsOut(len(self.seen), 0, 0, 100, 0.5, 0.0, 0.0))


@pytest.fixture
def manager():
    ports = PortArgs.create()
    engine = FakeEngine(ports)
    engine.start()
    info = SimpleNamespace(context_len=64, model_config=SimpleNamespace(vocab_size=100), lora_enabled=False,
                           lora_adapters=[])
    tm = TokenizerManager(ports, None, info, ServerMetrics())
    yield tm, engine
    tm.close()
    ports.cleanup()


def run(coro):
    return asyncio.run(coro)


def test_generate_streams_until_finished(manager):
    tm, _ = manager

    async def main():
        tm.start()
        return [out async for out in tm.generate([5, 6, 7], SamplingParams())]

    outs = run(main())
    assert "".join(o.text for o in outs) == "ab" and outs[-1].finished.kind == "length"
    assert tm.num_in_flight == 0
    assert b"jackfield_time_to_first_token_seconds_count 1.0" in tm.metrics.render()


def test_leaving_early_sends_an_abort(manager):
    tm, engine = manager

    async def main():
        tm.start()
        gen = tm.generate([0, 1], SamplingParams())
        first = await gen.__anext__()
        await gen.aclose()
        return first

    assert run(main()).text == "a"
    threading.Event().wait(0.2)
    assert any(isinstance(m, AbortReq) for m in engine.seen) and tm.num_in_flight == 0


def test_control_replies_and_fail_all(manager):
    tm, _ = manager

    async def main():
        tm.start()
        a, b = await asyncio.gather(tm.get_stats(), tm.get_stats())
        queue: asyncio.Queue = asyncio.Queue()
        tm.submit([0], SamplingParams(), queue)
        await queue.get()                      # the first increment; the request never finishes
        tm.fail_all("the scheduler process died")
        last = await queue.get()
        with pytest.raises(ServerUnavailable):
            tm.submit([1], SamplingParams(), queue)
        return a, b, last

    a, b, last = run(main())
    assert a.num_running < b.num_running       # replies matched in request order
    assert last.finished.kind == "abort" and "died" in last.finished.message


def test_the_default_timeout_aborts_with_408(manager):
    from jackfield.server.errors import APIError
    from jackfield.server.generation import RequestGroup, request_timeout

    tm, engine = manager
    tm.default_timeout = 0.3

    async def main():
        tm.start()
        with RequestGroup(tm, [[0, 5]], SamplingParams(), timeout=request_timeout(tm, None)) as group:  # never ends
            await group.collect()

    with pytest.raises(APIError) as info:
        run(main())
    assert info.value.status == 408 and "0.3 s" in info.value.message
    threading.Event().wait(0.2)
    assert any(isinstance(m, AbortReq) for m in engine.seen) and tm.num_in_flight == 0


def test_the_queue_limit_admits_whole_groups(manager):
    from jackfield.server.tokenizer_manager import ServerBusy

    tm, _ = manager
    tm.max_in_flight = 2

    async def main():
        tm.start()
        queue: asyncio.Queue = asyncio.Queue()
        tm.admit(2)
        tm.submit([0], SamplingParams(), queue)
        with pytest.raises(ServerBusy):
            tm.admit(2)
        tm.admit(1)

    run(main())
