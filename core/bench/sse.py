"""Reading streamed responses: SSE lines to JSON events, and each backend's chunk shape to text."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

@dataclass
class StreamState:
    """What has been read so far from one response stream."""

    text: str = ""
    events: int = 0
    chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str = ""


async def iter_sse_json(lines):
    """JSON objects from `data:` lines of an SSE stream, stopping at `data: [DONE]`.

    Comments, `event:`/`id:` lines, blank lines and undecodable payloads are skipped.
    """
    async for raw in lines:
        line = raw.strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            obj = json.loads(payload) if payload else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_chunk(backend: str, chunk: dict[str, Any], state: StreamState) -> str:
    """Update `state` from one stream event and return the new content text it carries.

    OpenAI chunks hold `choices[0].text` (or `delta.content` for chat) and maybe `usage`, possibly
    with an empty `choices` list; native chunks hold cumulative `text` and `meta_info` counts.
    """
    state.events += 1
    err = chunk.get("error")
    if err and not chunk.get("choices") and "text" not in chunk:
        state.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
        return ""
    if backend == "jackfield":
        usage = chunk.get("meta_info") or {}
        text = str(chunk.get("text") or "")
        cumulative = text.startswith(state.text)
        delta = text[len(state.text):] if cumulative else text
        state.text = text if cumulative else state.text + text
    else:
        usage = chunk.get("usage") or {}
        choices = chunk.get("choices") or []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = first.get("text")
        if delta is None:
            delta = (first.get("delta") or {}).get("content")
        delta = str(delta or "")
        state.text += delta
    if usage.get("completion_tokens") is not None:
        state.completion_tokens = int(usage["completion_tokens"])
    if usage.get("prompt_tokens") is not None:
        state.prompt_tokens = int(usage["prompt_tokens"])
    return delta
