"""Mistral tool calls: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`."""
from __future__ import annotations

from jackfield.sdk import JsonCallFormat, JsonToolCallParser, hookimpl


class MistralParser(JsonToolCallParser):
    name = "mistral"
    description = 'Mistral calls: [TOOL_CALLS] [{"name", "arguments"}, ...]'
    priority = 20
    template_markers = ("[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[INST]")
    keeps_special_tokens = True
    format = JsonCallFormat(start="[TOOL_CALLS]", array=True)


@hookimpl
def jackfield_register_tool_parsers(register):
    register(MistralParser)
