"""One chat request's plan (tools, constraint, reasoning) and the split of each choice's output.

`ChatPlan` is decided once per request from the server's parsers and the request's fields: which
tool calls to look for (free text in the model's format, or the constrained JSON of `required` and
named functions) and whether to separate reasoning. Each choice then gets a `ChoiceParser` that
splits its text, as it streams, into reasoning, answer text and tool-call pieces: the reasoning
parser runs first, and the answer it leaves goes through the tool-call stream.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace

from jackfield.sdk.reasoning_parser import ReasoningParser
from jackfield.sdk.tool_parser import CallDelta, ToolCall, ToolCallParser, ToolCallStream, merge_calls
from jackfield.server.errors import APIError
from jackfield.server.parsers import ChatParsers
from jackfield.server.tools import ToolRequest


@dataclass
class ChoiceDelta:
    reasoning: str = ""
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def extend(self, other: ChoiceDelta) -> ChoiceDelta:
        self.reasoning += other.reasoning
        self.content += other.content
        self.calls += other.calls
        return self

    @property
    def empty(self) -> bool:
        return not (self.reasoning or self.content or self.calls)


class ChoiceParser:
    """Splits one choice's generated text; call ids are made here, one per call."""

    def __init__(self, reasoning: ReasoningParser | None, calls: ToolCallStream | None):
        self.reasoning, self.calls = reasoning, calls
        self.call_ids: list[str] = []

    def feed(self, text: str) -> ChoiceDelta:
        if self.reasoning is None:
            return self._answer("", text, final=False)
        r = self.reasoning.feed(text)
        return self._answer(r.reasoning, r.content, final=False)

    def finish(self) -> ChoiceDelta:
        if self.reasoning is None:
            return self._answer("", "", final=True)
        r = self.reasoning.finish()
        return self._answer(r.reasoning, r.content, final=True)

    def parse(self, text: str) -> ChoiceDelta:
        return self.feed(text).extend(self.finish())

    def _answer(self, reasoning: str, text: str, final: bool) -> ChoiceDelta:
        if self.calls is None:
            return ChoiceDelta(reasoning, text)
        d = self.calls.feed(text)
        if final:
            d.extend(self.calls.finish())
        for piece in d.calls:
            if piece.name is not None:
                self.call_ids.append(f"call_{uuid.uuid4().hex[:24]}")
        return ChoiceDelta(reasoning, d.text, d.calls)

    def merged_calls(self, delta: ChoiceDelta) -> list[tuple[str, ToolCall]]:
        """(id, call) of a whole-output delta."""
        return list(zip(self.call_ids, merge_calls(delta.calls)))


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request asks of its output beyond plain text."""

    tools: ToolRequest | None = None
    parser: ToolCallParser | None = None            # with the request's tools; also writes past calls
    reasoning: type[ReasoningParser] | None = None  # set when reasoning is separated
    in_reasoning: bool = False                      # the prompt opened the reasoning

    def sampling_values(self) -> dict:
        """Sampling parameters the plan adds: the JSON schema of `required` and named-function calls."""
        if self.tools is None or not self.tools.constrained:
            return {}
        return {"json_schema": json.dumps(self.tools.schema(self.parser))}

    def with_prompt(self, prompt: str) -> ChatPlan:
        """The plan for this rendered prompt: does it open the reasoning (DeepSeek-R1's template)?"""
        return replace(self, in_reasoning=self.reasoning is not None and self.reasoning.starts_in_reasoning(prompt))

    def choice_parser(self) -> ChoiceParser:
        calls = None
        if self.tools is not None:
            calls = (self.parser.constrained_stream(self.tools.parallel and self.tools.choice == "required")
                     if self.tools.constrained else self.parser.stream())
        reasoning = self.reasoning(self.in_reasoning) if self.reasoning is not None else None
        return ChoiceParser(reasoning, calls)


def plan_chat(parsers: ChatParsers, tools: ToolRequest | None, separate_reasoning: bool | None) -> ChatPlan:
    """Decide the plan; a tool request needs a tool-call parser, separation a reasoning parser.

    A constrained call is the whole output from its first token, so it has no reasoning to separate.
    `with_prompt` completes the plan once the prompt is rendered."""
    if tools is not None and parsers.tool is None:
        raise APIError(400, "tool calling is off on this server (tool_call_parser = none)", param="tools")
    parser = parsers.tool(tools.tools if tools else ()) if parsers.tool is not None else None
    separate = parsers.reasoning_by_default if separate_reasoning is None else separate_reasoning
    if separate and parsers.reasoning is None:
        raise APIError(400, "this server separates no reasoning (reasoning_parser = none)",
                       param="separate_reasoning")
    reasoning = parsers.reasoning if separate and not (tools and tools.constrained) else None
    return ChatPlan(tools, parser, reasoning)
