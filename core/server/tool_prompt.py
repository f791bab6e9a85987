"""Chat history with tool calls, rendered for the model's chat template.

A template that reads `tools` (Qwen 2.5, Llama 3.1, Mistral, Hermes ...) gets the tools as `tools=`
and the history in Hugging Face's shape: assistant `tool_calls` with `arguments` as an object, and
`tool` messages with their `tool_call_id`. A template that does not (SmolLM2's, for one) would drop
them silently, so for it the server writes what the template cannot, as vLLM and SGLang do with
their tool templates: a system prompt listing the tools and the call format of the tool-call
parser (`ToolCallParser.system_prompt`), past calls as assistant text in that format
(`format_calls`), and tool results as user messages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from jackfield.sdk.tool_parser import ToolCall, ToolCallParser
from jackfield.server.chat_output import ChatPlan
from jackfield.server.errors import APIError
from jackfield.server.prompts import chat_text, content_text
from jackfield.server.protocol import ChatMessage
from jackfield.server.tokenizer_manager import TokenizerManager
from jackfield.tokenizer.chat import template_variables


@dataclass(frozen=True)
class HistoryCall:
    """A call of an assistant turn in the request's history."""

    id: str | None
    name: str
    arguments: str   # JSON text of an object


def takes_tools(chat_template: str | None) -> bool:
    """Whether the template renders the `tools` it is given."""
    return bool(chat_template) and "tools" in template_variables(chat_template)


def arguments_object(text: str, param: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"{param} is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict):
        raise APIError(400, f"{param} must be a JSON object, got {type(value).__name__}", param=param)
    return value


def assistant_turn(content: str, calls: list[HistoryCall], native: bool, parser: ToolCallParser | None) -> dict:
    """An assistant message with calls: HF's `tool_calls` for a template that takes tools, else text."""
    if native:
        items = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                 for c in calls]
        return {"role": "assistant", "content": content or None, "tool_calls": items}
    written = [ToolCall(c.name, c.arguments) for c in calls]
    text = (parser.format_calls(written) if parser is not None else
            "\n".join(json.dumps({"name": c.name, "arguments": json.loads(c.arguments)}) for c in written))
    return {"role": "assistant", "content": f"{content}\n{text}" if content else text}


def tool_turn(content: str, call_id: str | None, name: str | None, native: bool) -> dict:
    """The result of a call: a `tool` message, or a user message for a template without tool support."""
    if native:
        return {"role": "tool", "content": content, "tool_call_id": call_id, **({"name": name} if name else {})}
    return {"role": "user", "content": f"The function {name or call_id or 'you called'} returned:\n{content}"}


def with_tool_system_prompt(messages: list[dict], parser: ToolCallParser) -> list[dict]:
    """Put the parser's tool instructions in the system message (added when there is none)."""
    prompt = parser.system_prompt()
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{prompt}" if first["content"] else prompt},
                *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def openai_history(messages: list[ChatMessage], native: bool, parser: ToolCallParser | None) -> list[dict]:
    """OpenAI chat messages as template messages; `native`: the template takes tools."""
    out, names = [], {}
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        content = content_text(m.content, f"{param}.content")
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(400, f"{param}.tool_calls: only assistant messages hold tool calls", param=param)
            calls = [HistoryCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls]
            for j, c in enumerate(calls):
                arguments_object(c.arguments, f"{param}.tool_calls[{j}].function.arguments")
                names[c.id] = c.name
            out.append(assistant_turn(content, calls, native, parser))
        elif m.role == "tool":
            out.append(tool_turn(content, m.tool_call_id, m.name or names.get(m.tool_call_id), native))
        else:
            out.append({"role": m.role, "content": content, **({"name": m.name} if m.name else {})})
    return out


def render_prompt(tm: TokenizerManager, messages: list[dict], plan: ChatPlan, native: bool) -> str:
    """The prompt text: the request's tools as `tools=` for a template that takes them, else in the
    system prompt."""
    kwargs = {}
    if plan.tools is not None:
        if native:
            kwargs["tools"] = [t.as_openai() for t in plan.tools.tools]
        else:
            messages = with_tool_system_prompt(messages, plan.parser)
    return chat_text(tm, messages, **kwargs)
