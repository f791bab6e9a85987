"""Anthropic-compatible API: POST /v1/messages, plain or streamed with Anthropic's event types, and
POST /v1/messages/count_tokens.

Tools map onto the chat machinery: `tool_choice` `auto`/`any`/`tool`/`none` is the OpenAI `auto`/
`required`/named function/`none`; calls come back as `tool_use` blocks (streamed as
`content_block_start` with the name, then `input_json_delta` pieces), and `tool_use` /
`tool_result` blocks of the history render like OpenAI's assistant calls and tool messages.
"""
from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Request
from pydantic import BaseModel

from jackfield.io_struct import FinishReason
from jackfield.sdk.tool_parser import ToolCallParser
from jackfield.server.app import server_state
from jackfield.server.chat_output import ChoiceDelta, ChoiceParser, plan_chat
from jackfield.server.errors import APIError, anthropic_error_body
from jackfield.server.generation import (RequestGroup, abort_error, request_priority, request_timeout,
                                         until_disconnected)
from jackfield.server.prompts import chat_default, content_text, encode_text, max_new_tokens, sampling_params
from jackfield.server.protocol import AnthropicMessage, CountTokensRequest, MessagesRequest
from jackfield.server.sse import sse, sse_response
from jackfield.server.tool_prompt import HistoryCall, assistant_turn, render_prompt, takes_tools, tool_turn
from jackfield.server.tools import ToolRequest, check_tool, tool_request

router = APIRouter()
ANTHROPIC_NAMES = {"max_new_tokens": "max_tokens", "stop": "stop_sequences"}
CHOICES = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}
TEXT_BLOCK = {"type": "text", "text": ""}


def stop_reason(finish: FinishReason | None, called: bool = False) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence): max_tokens, stop_sequence (a stop string matched), tool_use or end_turn."""
    if finish is None:
        return None, None
    if finish.kind == "length":
        return "max_tokens", None
    if isinstance(finish.matched, str):
        return "stop_sequence", finish.matched
    return ("tool_use" if called else "end_turn"), None


def _usage(prompt_tokens: int, output_tokens: int, cached: int) -> dict:
    return {"input_tokens": prompt_tokens - cached, "output_tokens": output_tokens, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


def anthropic_tools(body: CountTokensRequest) -> ToolRequest | None:
    tools = [check_tool(t.name, t.input_schema, t.description, f"tools[{i}]", "input_schema")
             for i, t in enumerate(body.tools or ())]
    choice = body.tool_choice
    if choice is not None and choice.type == "tool" and not choice.name:
        raise APIError(400, "tool_choice of type 'tool' needs the tool's name", param="tool_choice.name")
    return tool_request(tools, CHOICES[choice.type] if choice else None, choice.name if choice else None,
                        not (choice and choice.disable_parallel_tool_use))


def _history(messages: list[AnthropicMessage], native: bool, writer: ToolCallParser | None) -> list[dict]:
    """Anthropic messages as template messages: tool_use blocks are assistant calls, tool_result blocks
    tool messages (placed before the user text of their message)."""
    out, names = [], {}
    for i, m in enumerate(messages):
        param = f"messages[{i}].content"
        blocks = m.content if isinstance(m.content, list) else None
        uses = [b for b in blocks or () if b.type == "tool_use"]
        results = [b for b in blocks or () if b.type == "tool_result"]
        text = content_text([b for b in blocks if b.type not in ("tool_use", "tool_result")] if blocks is not None
                            else m.content, param)
        if uses and m.role != "assistant" or results and m.role != "user":
            raise APIError(400, f"{param}: tool_use blocks belong to assistant turns, tool_result blocks to user "
                                "turns", param=param)
        for b in results:
            result = content_text(b.content, f"{param}.tool_result.content")
            out.append(tool_turn(f"Error: {result}" if b.is_error else result, b.tool_use_id,
                                 names.get(b.tool_use_id), native))
        if uses:
            calls = []
            for b in uses:
                if not isinstance(b.input, dict) or not b.name:
                    raise APIError(400, f"{param}: a tool_use block needs a name and an input object", param=param)
                calls.append(HistoryCall(b.id, b.name, json.dumps(b.input, ensure_ascii=False)))
                names[b.id] = b.name
            out.append(assistant_turn(text, calls, native, writer))
        elif text or not results:
            out.append({"role": m.role, "content": text})
    return out


class TokenCount(BaseModel):
    input_tokens: int


def _prompt(st, body: CountTokensRequest):
    """(the chat plan, the prompt's token ids) of a messages request: the history rendered with its tools."""
    tm = st.tokenizer_manager
    plan = plan_chat(st.parsers, anthropic_tools(body), separate_reasoning=False)
    native = takes_tools(tm.tokenizer.chat_template if tm.tokenizer is not None else None)
    msgs = [{"role": "system", "content": content_text(body.system, "system")}] if body.system else []
    msgs += _history(body.messages, native, plan.parser)
    return plan, encode_text(tm, render_prompt(tm, msgs, plan, native), "messages", add_special_tokens=False)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> TokenCount:
    """The prompt's token count after the chat template, as /v1/messages would run it."""
    st = server_state(request)
    st.check_model(body.model)
    return TokenCount(input_tokens=len(_prompt(st, body)[1]))


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    st = server_state(request)
    tm = st.tokenizer_manager
    st.check_model(body.model)
    st.check_generation()
    plan, ids = _prompt(st, body)
    max_new = max_new_tokens(body.max_tokens, [ids], tm.context_len, chat_default(tm.context_len), "max_tokens",
                             "messages")
    values = plan.sampling_values({"max_new_tokens": max_new, "temperature": body.temperature, "top_p": body.top_p,
                                   "top_k": body.top_k, "stop": body.stop_sequences})
    params = sampling_params(values, tm.vocab_size, ANTHROPIC_NAMES)
    group = RequestGroup(tm, [ids], params, timeout=request_timeout(tm, body.timeout),
                         priority=request_priority(request))
    message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": st.model_name}
    if body.stream:
        return sse_response(_stream(group.start(), message, plan.choice_parser()))
    with group:
        (result,) = await until_disconnected(request, group.collect())
    whole = plan.choice_parser().parse(result.text)
    calls = whole.calls
    content = [{"type": "text", "text": whole.content}] if whole.content or not calls else []
    content += [{"type": "tool_use", "id": _tool_use_id(cid), "name": c.name, "input": c.arguments_dict()}
                for cid, c in calls]
    reason, sequence = stop_reason(result.finish, bool(calls))
    return {**message, "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": _usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)}


def _tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")  # Anthropic's prefix


class _Blocks:
    """Content blocks of a streamed message, opened as output decides them: text, then a tool_use per call."""

    def __init__(self, split: ChoiceParser):
        self.split, self.index, self.open = split, -1, None

    def events(self, piece: ChoiceDelta) -> list[str]:
        out = []
        if piece.content:
            if self.open != "text":
                out += self.start(TEXT_BLOCK)
            out.append(sse({"type": "content_block_delta", "index": self.index,
                            "delta": {"type": "text_delta", "text": piece.content}}, "content_block_delta"))
        for p in piece.calls:
            if p.name is not None:
                block = {"type": "tool_use", "id": _tool_use_id(self.split.call_ids[p.index]), "name": p.name,
                         "input": {}}
                out += self.start(block)
            if p.arguments:
                out.append(sse({"type": "content_block_delta", "index": self.index,
                                "delta": {"type": "input_json_delta", "partial_json": p.arguments}},
                               "content_block_delta"))
        return out

    def start(self, block: dict) -> list[str]:
        out = self.close()
        self.index, self.open = self.index + 1, block["type"]
        out.append(sse({"type": "content_block_start", "index": self.index, "content_block": block},
                       "content_block_start"))
        if self.index == 0:
            out.append(sse({"type": "ping"}, "ping"))
        return out

    def close(self) -> list[str]:
        if self.open is None:
            return []
        self.open = None
        return [sse({"type": "content_block_stop", "index": self.index}, "content_block_stop")]


async def _stream(group: RequestGroup, message: dict, split: ChoiceParser):
    """`message_start` waits for the first output, which carries the prompt's cached-token count, so
    its usage matches the non-streamed response's."""
    blocks = _Blocks(split)
    try:
        started = False
        async for _, out in group.outputs():
            if out.finished is not None and out.finished.kind == "abort":
                err = abort_error(out.finished)
                yield sse(anthropic_error_body(err.status, err.message), "error")
                return
            if not started:
                started = True
                start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                         "usage": _usage(out.prompt_tokens, 0, out.cached_tokens)}
                yield sse({"type": "message_start", "message": start}, "message_start")
            piece = split.feed(out.text or "")
            if out.finished is not None:
                piece.extend(split.finish())
            for event in blocks.events(piece):
                yield event
            if out.finished is not None:
                if blocks.index < 0:  # nothing was generated: one empty text block
                    for event in blocks.start(TEXT_BLOCK):
                        yield event
                for event in blocks.close():
                    yield event
                reason, sequence = stop_reason(out.finished, bool(split.call_ids))
                yield sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": {"output_tokens": out.completion_tokens}}, "message_delta")
                yield sse({"type": "message_stop"}, "message_stop")
    except Exception as exc:
        yield sse(anthropic_error_body(500, f"internal server error ({type(exc).__name__})"), "error")
    finally:
        group.close()
