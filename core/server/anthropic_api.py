"""Anthropic-compatible API: POST /v1/messages, plain or streamed with Anthropic's event types."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from jackfield.io_struct import FinishReason
from jackfield.server.app import server_state
from jackfield.server.errors import anthropic_error_body
from jackfield.server.generation import RequestGroup, abort_error, request_timeout, until_disconnected
from jackfield.server.prompts import chat_default, chat_prompt, content_text, max_new_tokens, sampling_params
from jackfield.server.protocol import MessagesRequest
from jackfield.server.sse import sse, sse_response

router = APIRouter()
ANTHROPIC_NAMES = {"max_new_tokens": "max_tokens", "stop": "stop_sequences"}


def stop_reason(finish: FinishReason | None) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence): max_tokens, stop_sequence (a stop string matched) or end_turn."""
    if finish is None:
        return None, None
    if finish.kind == "length":
        return "max_tokens", None
    if isinstance(finish.matched, str):
        return "stop_sequence", finish.matched
    return "end_turn", None


def _usage(prompt_tokens: int, output_tokens: int, cached: int) -> dict:
    return {"input_tokens": prompt_tokens - cached, "output_tokens": output_tokens, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    st = server_state(request)
    tm = st.tokenizer_manager
    st.check_model(body.model)
    msgs = [{"role": "system", "content": content_text(body.system, "system")}] if body.system else []
    msgs += [{"role": m.role, "content": content_text(m.content, f"messages[{i}].content")}
             for i, m in enumerate(body.messages)]
    ids = chat_prompt(tm, msgs)
    max_new = max_new_tokens(body.max_tokens, [ids], tm.context_len, chat_default(tm.context_len), "max_tokens",
                             "messages")
    params = sampling_params({"max_new_tokens": max_new, "temperature": body.temperature, "top_p": body.top_p,
                              "top_k": body.top_k, "stop": body.stop_sequences}, tm.vocab_size, ANTHROPIC_NAMES)
    group = RequestGroup(tm, [ids], params, timeout=request_timeout(tm, body.timeout))
    message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": st.model_name}
    if body.stream:
        return sse_response(_stream(group.start(), message, len(ids)))
    with group:
        (result,) = await until_disconnected(request, group.collect())
    reason, sequence = stop_reason(result.finish)
    return {**message, "content": [{"type": "text", "text": result.text}], "stop_reason": reason,
            "stop_sequence": sequence, "usage": _usage(result.prompt_tokens, result.completion_tokens,
                                                       result.cached_tokens)}


async def _stream(group: RequestGroup, message: dict, prompt_tokens: int):
    try:
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": _usage(prompt_tokens, 0, 0)}
        yield sse({"type": "message_start", "message": start}, "message_start")
        yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  "content_block_start")
        yield sse({"type": "ping"}, "ping")
        async for _, out in group.outputs():
            if out.finished is not None and out.finished.kind == "abort":
                err = abort_error(out.finished)
                yield sse(anthropic_error_body(err.status, err.message), "error")
                return
            if out.text:
                delta = {"type": "text_delta", "text": out.text}
                yield sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
            if out.finished is not None:
                reason, sequence = stop_reason(out.finished)
                yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
                yield sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": {"output_tokens": out.completion_tokens}}, "message_delta")
                yield sse({"type": "message_stop"}, "message_stop")
    except Exception as exc:
        yield sse(anthropic_error_body(500, f"internal server error ({type(exc).__name__})"), "error")
    finally:
        group.close()
