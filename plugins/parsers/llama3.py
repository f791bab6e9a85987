"""Llama 3.1-3.3 JSON tool calls: `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`,
several separated by `;`."""
from __future__ import annotations

from jackfield.sdk import JsonCallFormat, JsonToolCallParser, hookimpl


class Llama3JsonParser(JsonToolCallParser):
    name = "llama3"
    description = 'Llama 3 JSON calls {"name", "parameters"}, optionally after <|python_tag|>, ";"-separated'
    priority = 10
    template_markers = ("<|start_header_id|>", "<|python_tag|>", "<|eom_id|>", '"parameters"')
    keeps_special_tokens = True
    arguments_key = "parameters"
    format = JsonCallFormat(start="<|python_tag|>", separator=";", arguments_key="parameters", bare_start=True)


@hookimpl
def jackfield_register_tool_parsers(register):
    register(Llama3JsonParser)
