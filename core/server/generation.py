"""RequestGroup: every choice of one API call in flight, and how the API layers wait for them.

One OpenAI call with k prompts and `n` choices becomes k*n engine requests whose outputs share one
queue; choice `i*n + j` is prompt i's j-th sample (OpenAI's numbering). Leaving the `with` block
(or `close()`) aborts whatever has not finished, so a client that goes away frees its KV at once.
The group is admitted as a whole (`TokenizerManager.admit`: 503 when the queue is full), and a
`timeout` (for a client's request: `request_timeout(tm, asked)`) ends every unfinished request with
an abort answered by HTTP 408.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

from fastapi import Request

from jackfield.io_struct import FinishReason, ReqOutput, TokenLogprob
from jackfield.sampling.params import SamplingParams
from jackfield.server.errors import APIError, error_body
from jackfield.server.sse import DONE, sse
from jackfield.server.tokenizer_manager import TokenizerManager

DISCONNECT_POLL_S = 0.5
MAX_REQUESTS_PER_CALL = 256


@dataclass
class Result:
    """One finished choice: its text, tokens, logprobs, finish reason and token counts."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    spec: dict | None = None
    input_logprobs: list[TokenLogprob] | None = None
    embedding: list[float] | None = None
    first_token_at: float | None = None  # time.monotonic() of the first output token

    def add(self, out: ReqOutput) -> None:
        self.text += out.text or ""
        self.token_ids += out.new_token_ids
        self.logprobs += out.logprobs or []
        self.finish = out.finished
        self.spec = out.spec or self.spec
        if out.new_token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if out.input_logprobs is not None:
            self.input_logprobs = out.input_logprobs
        if out.embedding is not None:
            self.embedding = out.embedding
        if out.prompt_tokens or out.completion_tokens:
            self.prompt_tokens, self.completion_tokens = out.prompt_tokens, out.completion_tokens
            self.cached_tokens = out.cached_tokens


class RequestGroup:
    """Submit `len(prompts) * n` requests; iterate `outputs()` or await `collect()`.

    `logprob_start_len` >= 0 asks for prompt logprobs; `priority` orders the scheduler's waiting
    queue (`request_priority`); with `pooling` ("last" | "mean") the requests are embeddings
    (`params` unused, n 1); `timeout` (seconds, `request_timeout`) aborts what is unfinished then."""

    def __init__(self, tm: TokenizerManager, prompts: list[list[int]], params: SamplingParams | None, n: int = 1,
                 logprob_start_len: int = -1, priority: int = 0, pooling: str | None = None,
                 timeout: float | None = None, lora: str | list[str | None] | None = None):
        if len(prompts) * n > MAX_REQUESTS_PER_CALL:
            raise APIError(400, f"{len(prompts)} prompts x n={n} exceeds {MAX_REQUESTS_PER_CALL} generations per call")
        self.tm, self.prompts, self.params, self.n = tm, prompts, params, n
        self.logprob_start_len, self.priority, self.pooling = logprob_start_len, priority, pooling
        self.timeout = timeout
        self.deadline: float | None = None
        self.loras = list(lora) if isinstance(lora, list) else [lora] * len(prompts)  # LoRA adapter per prompt
        self.queue: asyncio.Queue = asyncio.Queue()
        self.index: dict[str, int] = {}
        self.rids: list[str] = []
        self.pending: set[str] = set()

    def start(self) -> RequestGroup:
        """Submit every request; on failure the ones already sent are aborted."""
        self.tm.admit(self.size)
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        try:
            for i, ids in enumerate(self.prompts):
                for j in range(self.n):
                    if self.pooling is not None:
                        rid = self.tm.submit_embedding(ids, self.pooling, self.queue, self.priority)
                    else:
                        seed = self.params.seed + j if self.params.seed is not None else None
                        rid = self.tm.submit(ids, replace(self.params, n=1, seed=seed), self.queue,
                                             logprob_start_len=self.logprob_start_len, priority=self.priority,
                                             lora=self.loras[i])
                    self.index[rid] = i * self.n + j
                    self.rids.append(rid)
                    self.pending.add(rid)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Abort every request that has not finished (idempotent)."""
        for rid in list(self.pending):
            self.tm.abort(rid)
        self.pending.clear()

    def __enter__(self) -> RequestGroup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def size(self) -> int:
        return len(self.prompts) * self.n

    async def outputs(self) -> AsyncIterator[tuple[int, ReqOutput]]:
        """(choice index, increment) until every request has finished (or the timeout ended it)."""
        while self.pending:
            out: ReqOutput = await self._next()
            if out.finished is not None:
                self.pending.discard(out.rid)
            yield self.index[out.rid], out

    async def _next(self) -> ReqOutput:
        if self.deadline is None:
            return await self.queue.get()
        try:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(self.queue.get(), left)
        except asyncio.TimeoutError:
            message = f"the request did not finish within its timeout of {self.timeout:g} s"
            for rid in self.pending:  # abort in the engine; each ends with a 408 abort
                self.tm.abort(rid)
                self.queue.put_nowait(ReqOutput(rid, [], FinishReason("abort", message=message, status=408), 0, 0, 0))
            return self.queue.get_nowait()

    async def collect(self) -> list[Result]:
        """Every choice's Result, in index order; raises APIError if one was aborted."""
        results = [Result(i) for i in range(self.size)]
        async for i, out in self.outputs():
            results[i].add(out)
        for r in results:
            raise_if_aborted(r.finish)
        return results


def probe_group(st, ids: list[int], max_new_tokens: int, copies: int = 1) -> RequestGroup:
    """A greedy generation of `max_new_tokens` (an embedding, for a model served as an embedder) that
    checks the engine end to end: the warm-up and /health_generate. `copies` requests of it at once."""
    if st.info.embedding.is_embedding:
        return RequestGroup(st.tokenizer_manager, [ids] * copies, None, pooling=st.info.embedding.pooling)
    return RequestGroup(st.tokenizer_manager, [ids] * copies,
                        SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))


BATCH_PRIORITY = -1  # the Batch API's requests wait behind every interactive request


def request_priority(request: Request) -> int:
    """The scheduling priority of an HTTP request: 0, or what the Batch API runner put in the
    ASGI scope's state for the requests it makes (`batch_runner.py`); clients cannot set it."""
    return getattr(request.state, "priority", 0)


def request_timeout(tm: TokenizerManager, asked: float | None) -> float | None:
    """A client request's time limit: what it asked for, at most the server's request_timeout (also
    the default when it asked for nothing)."""
    limit = tm.default_timeout
    return min(asked, limit) if asked is not None and limit is not None else asked or limit


def raise_if_aborted(finish: FinishReason | None) -> None:
    if finish is not None and finish.kind == "abort":
        raise abort_error(finish)


def abort_error(finish: FinishReason | str) -> APIError:
    """Why a request was aborted, as an HTTP error: the status its FinishReason names (408 timeout,
    500 failed forward, 503 engine gone or shutting down), else 404 for a LoRA adapter unloaded
    between the API's check and the scheduler, 500 for an internal error, 400 (the engine refused
    the input)."""
    message, status = (finish, None) if isinstance(finish, str) else (finish.message, finish.status)
    if status is None and message.startswith("unknown LoRA adapter"):
        return APIError(404, message, param="model", code="model_not_found")
    if status is None and message.startswith("internal error"):
        status = 500
    if status == 500:
        return APIError(500, message, type="internal_error")
    return APIError(status or 400, message or "the request was aborted")


async def until_disconnected(request: Request, awaitable):
    """Await `awaitable`, but give up (APIError 499) if the HTTP client disconnects meanwhile."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError(499, "the client closed the connection")
    finally:
        if not task.done():
            task.cancel()


async def stream_group(group: RequestGroup, on_output: Callable[[int, ReqOutput], dict | None],
                       on_done: Callable[[], dict | None] | None = None, preamble: tuple[dict, ...] = ()):
    """The SSE body of a streamed RequestGroup, shared by the OpenAI and native APIs.

    `on_output(i, out)` turns one output of generation i into an event (None sends nothing); an
    aborted request ends the stream with an error event; after the last output `on_done()` may add
    one more event; `data: [DONE]` always closes the stream, and the group is closed on every path.
    """
    try:
        for event in preamble:
            yield sse(event)
        async for i, out in group.outputs():
            if out.finished is not None and out.finished.kind == "abort":
                yield sse(abort_error(out.finished).body())
                break
            event = on_output(i, out)
            if event is not None:
                yield sse(event)
        else:
            last = on_done() if on_done is not None else None
            if last is not None:
                yield sse(last)
        yield DONE
    except Exception as exc:
        yield sse(error_body(f"internal server error ({type(exc).__name__})", "internal_error"))
        yield DONE
    finally:
        group.close()
