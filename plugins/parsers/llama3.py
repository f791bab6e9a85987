"""Llama 3.1-3.3 JSON tool calls: `{"name": ..., "parameters": {...}}` opening the generation, or after
`<|python_tag|>` anywhere (that special token is in the text only with `skip_special_tokens` off);
several calls are separated by `;`."""
from __future__ import annotations

from typing import Sequence

from jackfield.sdk import JsonCallFormat, JsonToolCallParser, ToolCall, hookimpl


class Llama3JsonParser(JsonToolCallParser):
    name = "llama3"
    description = 'Llama 3 JSON calls {"name", "parameters"}, optionally after <|python_tag|>, ";"-separated'
    priority = 10
    template_markers = ("<|start_header_id|>", "<|python_tag|>", "<|eom_id|>", '"parameters"')
    arguments_key = "parameters"
    format = JsonCallFormat(start="<|python_tag|>", separator=";", arguments_key="parameters", bare_start=True)

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        """Bare JSON, as Llama 3's templates ask for (`<|python_tag|>` is for its built-in tools)."""
        return "; ".join(self.call_json(c) for c in calls)


@hookimpl
def jackfield_register_tool_parsers(register):
    register(Llama3JsonParser)
