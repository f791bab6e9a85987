"""Mistral tool calls: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.

`[TOOL_CALLS]` is a control token of Mistral's tokenizers, dropped from the text when special tokens
are skipped (the default), so an array of calls that opens the generation counts as calls too."""
from __future__ import annotations

import random
import string

from jackfield.sdk import JsonCallFormat, JsonToolCallParser, hookimpl

ID_CHARS = string.ascii_letters + string.digits


class MistralParser(JsonToolCallParser):
    name = "mistral"
    description = 'Mistral calls: [TOOL_CALLS] [{"name", "arguments"}, ...]'
    priority = 20
    template_markers = ("[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[INST]")
    format = JsonCallFormat(start="[TOOL_CALLS]", array=True, bare_start=True)

    def new_call_id(self) -> str:
        """Mistral's chat templates accept only ids of 9 letters or digits."""
        return "".join(random.choices(ID_CHARS, k=9))


@hookimpl
def jackfield_register_tool_parsers(register):
    register(MistralParser)
