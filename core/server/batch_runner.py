"""BatchRunner: runs OpenAI batches (/v1/batches) through the server's own routes, at low priority.

A batch reads its input file (JSONL, one `{"custom_id", "method": "POST", "url", "body"}` per line),
checks each line, and sends each valid one to the route it names (the batch's `endpoint`) as an
in-process ASGI request, so a line gets exactly the validation, defaults and response shape of the
same request sent over HTTP. Those requests carry `BATCH_PRIORITY` in the ASGI scope's state: the
scheduler admits them after every waiting interactive request. At most `concurrency` lines of a
batch are in flight at once. A malformed line, or one whose request fails, becomes a line of the
error file; the others still run. Cancelling stops the lines in flight (their requests are aborted
and free their KV) and writes the output of the finished ones.

Batches live in memory (lost on restart); their files are in the FileStore.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from jackfield.server.errors import APIError
from jackfield.server.file_store import FileStore, jsonl
from jackfield.server.generation import BATCH_PRIORITY

log = logging.getLogger(__name__)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_REQUESTS = 50_000
WINDOW_S = {"24h": 24 * 3600}


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"] = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class BatchRunner:
    def __init__(self, app, files: FileStore, concurrency: int, api_key: str | None):
        self.app, self.files, self.concurrency, self.api_key = app, files, concurrency, api_key
        self.batches: dict[str, Batch] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    def create(self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None) -> Batch:
        if endpoint not in ENDPOINTS:
            raise APIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}", param="endpoint")
        if completion_window not in WINDOW_S:
            raise APIError(400, f"completion_window must be one of {', '.join(WINDOW_S)}, got {completion_window!r}",
                           param="completion_window")
        file = self.files.get(input_file_id)
        if file.purpose != "batch":
            raise APIError(400, f"file '{input_file_id}' has purpose '{file.purpose}'; a batch needs purpose 'batch'",
                           param="input_file_id")
        now = int(time.time())
        batch = Batch(id=f"batch_{uuid.uuid4().hex}", endpoint=endpoint, input_file_id=input_file_id,
                      completion_window=completion_window, created_at=now, expires_at=now + WINDOW_S[completion_window],
                      metadata=metadata)
        self.batches[batch.id] = batch
        # a fresh context: the batch's lines are not this HTTP request (first_token.ARRIVED)
        self.tasks[batch.id] = asyncio.get_running_loop().create_task(self._run(batch), name=batch.id,
                                                                     context=contextvars.Context())
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise APIError(404, f"no batch with id '{batch_id}'", param="batch_id", code="batch_not_found")
        return batch

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        if batch.status in ("validating", "in_progress"):
            batch.status, batch.cancelling_at = "cancelling", int(time.time())
            self.tasks[batch_id].cancel()
        elif batch.status not in ("cancelling", "cancelled"):
            raise APIError(400, f"batch '{batch_id}' is {batch.status} and cannot be cancelled", param="batch_id")
        return batch

    def list(self) -> list[Batch]:
        return sorted(self.batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)

    async def close(self) -> None:
        """Cancel every running batch (server shutdown)."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # ---- running ------------------------------------------------------------------------------
    async def _run(self, batch: Batch) -> None:
        outputs: dict[int, dict] = {}
        errors: dict[int, dict] = {}
        try:
            lines = self.files.content(batch.input_file_id).decode("utf-8", errors="replace").splitlines()
            valid, seen = [], set()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parsed, custom_id = _parse_line(line, n, batch.endpoint)
                if isinstance(parsed, dict) and custom_id in seen:
                    parsed = f"line {n}: custom_id {custom_id!r} is used by an earlier line"
                if isinstance(parsed, dict):
                    valid.append((n, parsed))
                    seen.add(custom_id)
                else:
                    errors[n] = _error_record(custom_id, "invalid_request", parsed)
            batch.request_counts = RequestCounts(total=len(valid) + len(errors), failed=len(errors))
            if batch.request_counts.total == 0 or batch.request_counts.total > MAX_REQUESTS:
                why = "the input file holds no request" if not batch.request_counts.total else (
                    f"the input file holds {batch.request_counts.total} requests; at most {MAX_REQUESTS} are allowed")
                batch.errors = BatchErrors(data=[BatchError(code="invalid_file", message=why)])
                batch.status, batch.failed_at = "failed", int(time.time())
                return
            batch.status, batch.in_progress_at = "in_progress", int(time.time())
            limit = asyncio.Semaphore(self.concurrency)

            async def run_line(n: int, line: dict) -> None:
                async with limit:
                    status, body = await self._call(batch.endpoint, line["body"])
                record = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line["custom_id"],
                          "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}}
                if status == 200:
                    outputs[n] = {**record, "error": None}
                    batch.request_counts.completed += 1
                else:
                    err = body.get("error", {}) if isinstance(body, dict) else {}
                    errors[n] = {**record, "error": {"code": err.get("code") or err.get("type") or str(status),
                                                     "message": err.get("message") or f"HTTP {status}"}}
                    batch.request_counts.failed += 1

            await asyncio.gather(*(run_line(n, line) for n, line in valid))
            self._finish(batch, outputs, errors, "completed")
        except asyncio.CancelledError:
            self._finish(batch, outputs, errors, "cancelled")
        except Exception as exc:
            log.exception("batch %s failed", batch.id)
            batch.errors = BatchErrors(data=[BatchError(code="internal_error", message=f"{type(exc).__name__}: {exc}")])
            batch.status, batch.failed_at = "failed", int(time.time())

    def _finish(self, batch: Batch, outputs: dict[int, dict], errors: dict[int, dict], status: str) -> None:
        batch.status, batch.finalizing_at = "finalizing", int(time.time())
        if outputs:
            batch.output_file_id = self.files.save_bytes(jsonl([outputs[n] for n in sorted(outputs)]),
                                                         f"{batch.id}_output.jsonl", "batch_output").id
        if errors:
            batch.error_file_id = self.files.save_bytes(jsonl([errors[n] for n in sorted(errors)]),
                                                        f"{batch.id}_error.jsonl", "batch_output").id
        now = int(time.time())
        if status == "cancelled":
            batch.status, batch.cancelled_at = "cancelled", now
        else:
            batch.status, batch.completed_at = "completed", now

    async def _call(self, path: str, body: dict) -> tuple[int, Any]:
        """POST `body` to `path` through the app in this process; (status, parsed JSON body)."""
        raw = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        if self.api_key:
            headers.append((b"authorization", f"Bearer {self.api_key}".encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": headers, "client": ("batch", 0), "server": ("jackfield", 0),
                 "state": {"priority": BATCH_PRIORITY}}
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the batch's cancellation cancels this task

        status, chunks = 500, []

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception:  # the error response was sent before the app re-raised it
            log.debug("batch request to %s raised", path, exc_info=True)
        try:
            return status, json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            return status, {"error": {"message": "the response was not JSON", "type": "internal_error"}}


def _parse_line(line: str, n: int, endpoint: str) -> tuple[dict | str, str | None]:
    """(the line's request or why it is malformed, its custom_id when it has one)."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        return f"line {n}: not valid JSON ({exc})", None
    if not isinstance(req, dict):
        return f"line {n}: a request must be a JSON object", None
    custom_id = req.get("custom_id") if isinstance(req.get("custom_id"), str) else None
    return _check_line(req, n, endpoint), custom_id


def _check_line(req: dict, n: int, endpoint: str) -> dict | str:
    unknown = sorted(set(req) - {"custom_id", "method", "url", "body"})
    if unknown:
        return f"line {n}: unsupported field '{unknown[0]}'"
    if not isinstance(req.get("custom_id"), str) or not req["custom_id"]:
        return f"line {n}: custom_id must be a non-empty string"
    if req.get("method") != "POST":
        return f"line {n}: method must be POST, got {req.get('method')!r}"
    if req.get("url") != endpoint:
        return f"line {n}: url must be the batch's endpoint {endpoint}, got {req.get('url')!r}"
    if not isinstance(req.get("body"), dict):
        return f"line {n}: body must be a JSON object"
    if req["body"].get("stream"):
        return f"line {n}: stream is not supported in a batch"
    return req


def _error_record(custom_id: str | None, code: str, message: str) -> dict:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}
