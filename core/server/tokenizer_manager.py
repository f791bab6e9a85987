"""TokenizerManager: the main process's side of the engine, next to FastAPI on one asyncio loop.

It tokenizes prompts, keeps `rid -> ReqState` for every request in flight, pushes
TokenizedGenerateReq / AbortReq / FlushCacheReq / GetStatsReq to the scheduler process, and reads
the detokenizer's socket in a background task: request outputs go to the request's queue, control
replies resolve the oldest waiter of their kind (replies come back in request order).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import AsyncIterator

import zmq
import zmq.asyncio

from jackfield.engine_loop import EngineInfo
from jackfield.io_struct import (AbortReq, BatchOutput, FinishReason, FlushCacheOut, FlushCacheReq, GetStatsReq,
                                 LoadLoRAReq, LoRAUpdateOut, ReqOutput, StatsOut, TokenizedEmbeddingReq,
                                 TokenizedGenerateReq, UnloadLoRAReq)
from jackfield.sampling.params import SamplingParams
from jackfield.server.first_token import ARRIVED, TOKENIZING, first_token_stages
from jackfield.server.ipc import PortArgs, pull_socket, push_socket
from jackfield.server.messages import ControlFailed
from jackfield.server.metrics import ServerMetrics

log = logging.getLogger(__name__)
CONTROL_TIMEOUT_S = 30.0
UNLOAD_TIMEOUT_S = 3600.0  # an unload waits for the adapter's requests to finish
REPLY_TO = {StatsOut: "GetStatsReq", FlushCacheOut: "FlushCacheReq"}


def reply_key(msg) -> str | None:
    """Which waiters a control reply resolves: a LoRA update's request id, else the request kind."""
    if isinstance(msg, LoRAUpdateOut):
        return msg.request_id
    return msg.request if isinstance(msg, ControlFailed) else REPLY_TO.get(type(msg))


class ServerUnavailable(RuntimeError):
    """The engine is gone (a subprocess died) or shutting down; maps to HTTP 503."""

    retry_after: int | None = None
    code: str | None = None


class ServerBusy(ServerUnavailable):
    """More requests are queued than `max_queued_requests` allows; HTTP 503 with Retry-After."""

    retry_after = 1
    code = "queue_full"


@dataclass
class ReqState:
    rid: str
    queue: asyncio.Queue
    created: float                  # time.monotonic() when it was sent to the scheduler
    arrived: float | None = None    # ... when its HTTP request arrived (None: not over HTTP)
    tokenizing: float = 0.0         # seconds its HTTP request spent tokenizing before the send
    first_token: float | None = None
    last_token: float | None = None


class TokenizerManager:
    """Submit requests and control messages; outputs arrive on the queue given to `submit`."""

    def __init__(self, ports: PortArgs, tokenizer, info: EngineInfo, metrics: ServerMetrics,
                 max_queued_requests: int | None = None, default_timeout: float | None = None):
        self.tokenizer, self.info, self.metrics = tokenizer, info, metrics
        self.context_len = info.context_len
        # A text longer than this cannot fit the context (no token is longer than the longest one
        # in the vocabulary), so it is refused before the tokenizer spends time on it.
        self.max_prompt_chars = info.context_len * (tokenizer.max_token_chars if tokenizer is not None else 1)
        self.default_timeout = default_timeout  # seconds a request may take when it names no timeout
        self.max_in_flight = None if max_queued_requests is None else info.max_running_requests + max_queued_requests
        self.vocab_size = info.model_config.vocab_size
        # LoRA adapters requests may name: what the scheduler reported last, less those being unloaded
        self.lora_enabled = info.lora_enabled
        self.lora_adapters: dict[str, dict] = {a["name"]: a for a in info.lora_adapters}
        # Sockets last: a context left with open sockets blocks the garbage collector in term()
        self._sync_ctx = zmq.Context()
        self._async_ctx = zmq.asyncio.Context()
        self._send_sock = push_socket(self._sync_ctx, ports.scheduler_input)
        self._recv_sock = pull_socket(self._async_ctx, ports.tokenizer)
        self.rid_to_state: dict[str, ReqState] = {}
        self._waiters: dict[str, deque[asyncio.Future]] = defaultdict(deque)
        self.failure: str | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start reading the detokenizer's socket; call from the running event loop."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._handle_loop(self._recv_sock, self._dispatch),
                                                                  name="tokenizer-manager"))

    def fail_all(self, message: str) -> None:
        """Finish every request in flight with an abort (HTTP 503) and refuse new work (a subprocess
        died, or the server is shutting down)."""
        self.failure = message
        for state in list(self.rid_to_state.values()):
            reason = FinishReason("abort", message=message, status=503)
            state.queue.put_nowait(ReqOutput(state.rid, [], reason, 0, 0, 0, text=""))
        self.rid_to_state.clear()
        for waiters in self._waiters.values():
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_exception(ServerUnavailable(message))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._send_sock.close(linger=0)
        self._recv_sock.close(linger=0)
        self._sync_ctx.term()
        self._async_ctx.term()

    # ---- requests -----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: send token ids instead of text")
        start = time.monotonic()
        try:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        finally:
            TOKENIZING.set(TOKENIZING.get() + time.monotonic() - start)

    def admit(self, count: int) -> None:
        """Raise ServerUnavailable unless `count` more requests may start now (ServerBusy when
        `max_queued_requests` would be exceeded: in flight > max_running_requests + max_queued_requests)."""
        if self.failure is not None:
            raise ServerUnavailable(self.failure)
        if self.max_in_flight is not None and self.num_in_flight + count > self.max_in_flight:
            raise ServerBusy(f"the server is at capacity: {self.num_in_flight} requests in flight, at most "
                             f"{self.max_in_flight} (max_running_requests + max_queued_requests); retry later")

    def submit(self, input_ids: list[int], params: SamplingParams, queue: asyncio.Queue, logprob_start_len: int = -1,
               priority: int = 0, lora: str | None = None) -> str:
        """Send one request (n must be 1) running LoRA adapter `lora` (None: the base model); its
        ReqOutputs, text filled in, go to `queue`. Returns its rid. `logprob_start_len` >= 0 asks for
        the prompt's logprobs from that position on; `priority` orders the waiting queue (higher first)."""
        # Always streamed inside the engine: the manager needs every token for TTFT/ITL metrics and
        # disconnect handling; it is the HTTP layer that decides whether the client sees a stream.
        return self._submit(TokenizedGenerateReq(
            self._new_rid(), list(input_ids), params, return_logprob=params.logprobs,
            top_logprobs_num=params.top_logprobs_num, stream=True, logprob_start_len=logprob_start_len,
            priority=priority, lora=lora), queue)

    def submit_embedding(self, input_ids: list[int], pooling: str, queue: asyncio.Queue, priority: int = 0) -> str:
        """Send one embedding request; its single ReqOutput (with `embedding`) goes to `queue`."""
        return self._submit(TokenizedEmbeddingReq(self._new_rid(), list(input_ids), pooling, priority), queue)

    def _new_rid(self) -> str:
        if self.failure is not None:
            raise ServerUnavailable(self.failure)
        return uuid.uuid4().hex

    def _submit(self, msg, queue: asyncio.Queue) -> str:
        self.rid_to_state[msg.rid] = ReqState(msg.rid, queue, time.monotonic(), ARRIVED.get(), TOKENIZING.get())
        self._send(msg)
        return msg.rid

    async def generate(self, input_ids: list[int], params: SamplingParams) -> AsyncIterator[ReqOutput]:
        """Stream one request's outputs (text filled in) until it finishes; leaving early aborts it."""
        queue: asyncio.Queue = asyncio.Queue()
        rid = self.submit(input_ids, params, queue)
        try:
            while True:
                out = await queue.get()
                yield out
                if out.finished is not None:
                    return
        finally:
            self.abort(rid)

    def abort(self, rid: str) -> None:
        """Abort a request still in flight (a client went away); its KV is freed by the scheduler."""
        if self.rid_to_state.pop(rid, None) is not None:
            self._send(AbortReq(rid))

    @property
    def num_in_flight(self) -> int:
        return len(self.rid_to_state)

    # ---- control ------------------------------------------------------------------------------
    async def get_stats(self) -> StatsOut:
        return await self._control(GetStatsReq())

    async def flush_cache(self) -> FlushCacheOut:
        return await self._control(FlushCacheReq())

    async def load_lora(self, name: str, path: str) -> LoRAUpdateOut:
        out = await self._control(LoadLoRAReq(name, path, uuid.uuid4().hex), per_request=True)
        self._adapters_from(out)
        return out

    async def unload_lora(self, name: str) -> LoRAUpdateOut:
        """Unload `name`: new requests for it are refused at once; the reply comes once its
        requests have finished."""
        self.lora_adapters.pop(name, None)
        out = await self._control(UnloadLoRAReq(name, uuid.uuid4().hex), per_request=True, timeout=UNLOAD_TIMEOUT_S)
        self._adapters_from(out)
        return out

    def _adapters_from(self, out: LoRAUpdateOut) -> None:
        self.lora_adapters = {a["name"]: a for a in out.adapters}

    async def _control(self, req, per_request: bool = False, timeout: float = CONTROL_TIMEOUT_S):
        """Send a control request and await its reply: replies of one kind come back in order, so
        they resolve the oldest waiter of their kind; `per_request` replies (LoRA updates, which may
        wait on running requests) carry the request's id instead."""
        if self.failure is not None:
            raise ServerUnavailable(self.failure)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[req.request_id if per_request else type(req).__name__].append(fut)
        self._send(req)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if per_request:
                self._waiters.pop(req.request_id, None)

    # ---- transport ----------------------------------------------------------------------------
    def _send(self, msg) -> None:
        self._send_sock.send_pyobj(msg)

    async def _handle_loop(self, sock: zmq.asyncio.Socket, handle) -> None:
        """Read `sock` until cancelled, passing each message to `handle`."""
        while True:
            msg = await sock.recv_pyobj()
            try:
                handle(msg)
            except Exception:
                log.exception("failed to dispatch %s", type(msg).__name__)

    def _dispatch(self, msg) -> None:
        if isinstance(msg, BatchOutput):
            now = time.monotonic()
            for out in msg.outputs:
                self._deliver(out, now)
            return
        name = reply_key(msg)
        waiters = self._waiters.get(name)
        if not waiters:
            log.warning("unexpected %s from the engine", type(msg).__name__)
            return
        fut = waiters.popleft()
        if fut.done():  # its caller timed out; this reply was its, so it is dropped
            return
        if isinstance(msg, ControlFailed):
            fut.set_exception(RuntimeError(msg.message))
        else:
            fut.set_result(msg)

    def _deliver(self, out: ReqOutput, now: float) -> None:
        state = self.rid_to_state.get(out.rid)
        if state is None:  # aborted by us; the scheduler's final word on it is not needed
            return
        if out.timing is not None and state.first_token is None:
            self.metrics.observe_first_token_stages(first_token_stages(state.arrived, state.created, out.timing, now,
                                                                                state.tokenizing))
        if out.new_token_ids:
            self.metrics.observe_tokens(now, state.created, state.first_token, state.last_token, len(out.new_token_ids))
            state.first_token = state.first_token or now
            state.last_token = now
        if out.finished is not None:
            del self.rid_to_state[out.rid]
            self.metrics.observe_finished(now, state.created, out.prompt_tokens, out.cached_tokens)
        state.queue.put_nowait(out)
