"""Streaming response helpers: Server-Sent Events (OpenAI, Anthropic, native) and NDJSON (Ollama)."""
from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi.responses import StreamingResponse

DONE = "data: [DONE]\n\n"
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict, event: str | None = None) -> str:
    """One SSE event; `event` names it (Anthropic's typed events)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def ndjson(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def sse_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=NO_BUFFERING)


def ndjson_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="application/x-ndjson", headers=NO_BUFFERING)
