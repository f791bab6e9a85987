"""The soak test's requests: a seeded mix over the chat, completions and native APIs, and the check
that classifies how each one ended.

Every request ends in exactly one outcome:

* `completed`: every choice (n of them) got exactly one finish reason, and a stream ended with
  `data: [DONE]`;
* `errored`: the server said why: an HTTP error with an `{"error": ...}` body, or an error event in
  the stream (followed by `[DONE]`);
* `dropped`: the client walked away on purpose (a disconnect mid-stream, an abort before the answer);
* `lost`: anything else: no answer, a connection closed without notice, a stream cut short, a
  choice missing its finish reason;
* `duplicated`: a choice that finished twice, or more choices than asked for.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

WORDS = ("river stone paper light garden window music number silver market forest engine story "
         "winter orange planet bridge letter mountain coffee").split()
STOPS = (["\n\n"], ["."], [" the", "\n"])


@dataclass
class SoakRequest:
    api: str                  # chat | completions | native
    stream: bool
    n: int
    body: dict[str, Any]
    drop_after: int | None    # stream: events to read before disconnecting; non-stream: None
    abort_after_s: float | None  # non-stream: seconds before the client gives up on purpose
    json_output: bool = False  # a response_format request: completed content must parse as JSON

    @property
    def path(self) -> str:
        return {"chat": "/v1/chat/completions", "completions": "/v1/completions", "native": "/generate"}[self.api]


@dataclass
class Outcome:
    kind: str                 # completed | errored | dropped | lost | duplicated
    api: str
    stream: bool
    latency_s: float
    finished_at: float
    detail: str = ""
    status: int | None = None
    ttft_s: float | None = None


@dataclass
class MixOptions:
    max_tokens: int = 64
    long_prompt_words: int = 1200
    disconnect_rate: float = 0.1
    abort_rate: float = 0.05
    grammar: bool = False     # the server has a grammar backend: some chat requests ask for JSON
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_request(rng: random.Random, opt: MixOptions) -> SoakRequest:
    api = rng.choice(("chat", "completions", "native"))
    stream = rng.random() < 0.6
    n = rng.choice((1, 1, 1, 2, 3))
    words = rng.randint(opt.long_prompt_words // 2, opt.long_prompt_words) if rng.random() < 0.15 else rng.randint(3, 40)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    max_tokens = rng.randint(1, opt.max_tokens)
    sampling: dict[str, Any] = {"temperature": rng.choice((0.0, 0.7, 1.0)), "seed": rng.randint(0, 1 << 30)}
    if rng.random() < 0.3:
        sampling["stop"] = rng.choice(STOPS)
    json_output = False
    if api == "native":
        body = {"text": text, "stream": stream,
                "sampling_params": {**sampling, "max_new_tokens": max_tokens, "n": n}}
    else:
        body = {"max_tokens": max_tokens, "n": n, "stream": stream, **sampling}
        if opt.model:
            body["model"] = opt.model
        if api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
            if opt.grammar and rng.random() < 0.2:
                body["response_format"] = {"type": "json_object"}
                body.pop("stop", None)
                json_output = True
        else:
            body["prompt"] = text
    body.update(opt.extra)
    drop_after = rng.randint(1, 6) if stream and rng.random() < opt.disconnect_rate else None
    abort_after = rng.uniform(0.05, 1.0) if not stream and rng.random() < opt.abort_rate else None
    return SoakRequest(api, stream, n, body, drop_after, abort_after, json_output)


async def run_request(client: httpx.AsyncClient, req: SoakRequest, timeout: float) -> Outcome:
    start = time.monotonic()
    try:
        if req.stream:
            kind, detail, status, ttft = await _streamed(client, req, timeout, start)
        else:
            call = client.post(req.path, json=req.body, timeout=timeout)
            try:
                resp = await (asyncio.wait_for(call, req.abort_after_s) if req.abort_after_s else call)
            except asyncio.TimeoutError:
                return _outcome(req, "dropped", start, "aborted by the client")
            kind, detail, status, ttft = (*_check_plain(req, resp), resp.status_code, None)
    except httpx.TimeoutException:
        return _outcome(req, "lost", start, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return _outcome(req, "lost", start, f"{type(exc).__name__}: {exc}")
    return _outcome(req, kind, start, detail, status, ttft)


def _outcome(req: SoakRequest, kind: str, start: float, detail: str = "", status: int | None = None,
             ttft: float | None = None) -> Outcome:
    now = time.monotonic()
    return Outcome(kind, req.api, req.stream, now - start, now, detail, status, ttft)


def _error_notice(resp: httpx.Response) -> tuple[str, str]:
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return "errored", f"{resp.status_code}: {err['message'][:120]}"
    return "lost", f"HTTP {resp.status_code} without an error body: {resp.text[:120]!r}"


def _check_plain(req: SoakRequest, resp: httpx.Response) -> tuple[str, str]:
    if resp.status_code != 200:
        return _error_notice(resp)
    try:
        data = resp.json()
    except ValueError:
        return "lost", "a 200 whose body is not JSON"
    if req.api == "native":
        items = data if isinstance(data, list) else [data]
        finishes = [(it.get("meta_info") or {}).get("finish_reason") for it in items]
        texts = [it.get("text", "") for it in items]
    else:
        items = data.get("choices") or []
        if sorted(c.get("index") for c in items) != list(range(len(items))):
            return "duplicated", f"choice indexes {[c.get('index') for c in items]}"
        finishes = [c.get("finish_reason") for c in items]
        texts = [(c.get("message") or {}).get("content") or c.get("text") or "" for c in items]
    return _judge(req, len(items), finishes, texts)


def _judge(req: SoakRequest, count: int, finishes: list, texts: list[str]) -> tuple[str, str]:
    if count > req.n:
        return "duplicated", f"{count} choices for n={req.n}"
    if count < req.n or any(f in (None, "") for f in finishes):
        return "lost", f"{count} of {req.n} choices, finish reasons {finishes}"
    if req.json_output:
        for text, finish in zip(texts, finishes):
            if finish == "stop":
                try:
                    json.loads(text)
                except ValueError:
                    return "errored", f"response_format json_object gave non-JSON: {text[:80]!r}"
    return "completed", ""


async def _streamed(client: httpx.AsyncClient, req: SoakRequest, timeout: float, start: float):
    finishes: dict[int, list] = {}
    texts: dict[int, str] = {}
    events, ttft = 0, None
    async with client.stream("POST", req.path, json=req.body, timeout=timeout) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return (*_error_notice(resp), resp.status_code, None)
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return (*_stream_verdict(req, finishes, texts), 200, ttft)
            event = json.loads(payload)
            events += 1
            ttft = ttft if ttft is not None else time.monotonic() - start
            if "error" in event:
                err = event["error"]
                return "errored", f"in-stream: {(err or {}).get('message', err)!s:.120}", 200, ttft
            _absorb(req, event, finishes, texts)
            if req.drop_after is not None and events >= req.drop_after:
                return "dropped", f"disconnected after {events} events", 200, ttft
    return "lost", f"the stream ended without [DONE] after {events} events", 200, ttft


def _absorb(req: SoakRequest, event: dict, finishes: dict[int, list], texts: dict[int, str]) -> None:
    if req.api == "native":
        i = event.get("index", 0)
        texts[i] = event.get("text", "")
        reason = (event.get("meta_info") or {}).get("finish_reason")
        if reason:
            finishes.setdefault(i, []).append(reason.get("type") if isinstance(reason, dict) else reason)
        return
    for choice in event.get("choices") or []:
        i = choice.get("index", 0)
        texts[i] = texts.get(i, "") + ((choice.get("delta") or {}).get("content") or choice.get("text") or "")
        if choice.get("finish_reason"):
            finishes.setdefault(i, []).append(choice["finish_reason"])


def _stream_verdict(req: SoakRequest, finishes: dict[int, list], texts: dict[int, str]) -> tuple[str, str]:
    if any(len(f) > 1 for f in finishes.values()) or any(i >= req.n for i in finishes):
        return "duplicated", f"finish reasons per choice {finishes}"
    reasons = [finishes[i][0] if i in finishes else None for i in range(req.n)]
    return _judge(req, req.n, reasons, [texts.get(i, "") for i in range(req.n)])
