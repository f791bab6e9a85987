"""`<think> ... </think>` reasoning (Qwen3, QwQ, DeepSeek-R1 and its distills)."""
from __future__ import annotations

from jackfield.sdk import TagReasoningParser, hookimpl


class ThinkTagParser(TagReasoningParser):
    name = "think"
    description = "reasoning in <think>...</think> before the answer (Qwen3, QwQ, DeepSeek-R1); the template may open it"
    priority = 10
    template_markers = ("<think>", "</think>")


@hookimpl
def jackfield_register_reasoning_parsers(register):
    register(ThinkTagParser)
