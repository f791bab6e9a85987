"""Qwen 2.5 / Qwen 3 and Hermes tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call."""
from __future__ import annotations

from jackfield.sdk import JsonCallFormat, JsonToolCallParser, hookimpl


class HermesParser(JsonToolCallParser):
    name = "hermes"
    description = "Qwen 2.5/3 and Hermes calls: <tool_call>{\"name\", \"arguments\"}</tool_call>, one per call"
    priority = 30
    template_markers = ("<tool_call>", "</tool_call>", "<|im_start|>")
    format = JsonCallFormat(start="<tool_call>", end="</tool_call>")


@hookimpl
def jackfield_register_tool_parsers(register):
    register(HermesParser)
