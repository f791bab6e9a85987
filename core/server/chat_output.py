"""One chat request's plan (tools, constraint, reasoning) and the split of each choice's output.

`ChatPlan` is decided once per request from the server's parsers and the request's fields: which
tool calls to look for (free text in the model's format, or the constrained JSON of `required` and
named functions) and whether to separate reasoning. Each choice then gets a `ChoiceParser` that
splits its text, as it streams, into reasoning, answer text and tool-call pieces: the reasoning
parser runs first, and the answer it leaves goes through the tool-call stream.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from jackfield.sdk.reasoning_parser import ReasoningDelta, ReasoningParser
from jackfield.sdk.tool_parser import CallDelta, ToolCall, ToolCallParser, ToolCallStream
from jackfield.server.errors import APIError
from jackfield.server.parsers import ChatParsers
from jackfield.server.tools import ToolRequest

CONSTRAINT_KEYS = ("json_schema", "regex", "ebnf")  # the structured-output sampling parameters


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
    """Splits one choice's generated text; call ids are made here, one per call. Calls past
    `max_calls` (1 when `parallel_tool_calls` is false) are dropped."""

    def __init__(self, reasoning: ReasoningParser | None, calls: ToolCallStream | None,
                 parser: ToolCallParser | None = None, max_calls: int | None = None):
        self.reasoning, self.calls, self.parser, self.max_calls = reasoning, calls, parser, max_calls
        self.call_ids: list[str] = []

    def feed(self, text: str) -> ChoiceDelta:
        return self._answer(self.reasoning.feed(text) if self.reasoning else ReasoningDelta("", text), final=False)

    def finish(self) -> ChoiceDelta:
        return self._answer(self.reasoning.finish() if self.reasoning else ReasoningDelta(), final=True)

    def parse(self, text: str) -> ChoiceResult:
        """A finished choice at once (a call cut short stays text)."""
        r = self.reasoning.parse(text) if self.reasoning is not None else ReasoningDelta("", text)
        if self.calls is None:
            return ChoiceResult(r.reasoning, r.content)
        whole = self.calls.parse(r.content)
        calls = whole.calls[:self.max_calls]
        return ChoiceResult(r.reasoning, whole.text, [(self.parser.new_call_id(), c) for c in calls])

    def _answer(self, r: ReasoningDelta, final: bool) -> ChoiceDelta:
        if self.calls is None:
            return ChoiceDelta(r.reasoning, r.content)
        d = self.calls.feed(r.content)
        if final:
            d.extend(self.calls.finish())
        kept = [p for p in d.calls if self.max_calls is None or p.index < self.max_calls]
        self.call_ids += [self.parser.new_call_id() for piece in kept if piece.name is not None]
        return ChoiceDelta(r.reasoning, d.text, kept)


@dataclass
class ChoiceResult:
    """A finished choice: reasoning, answer text and (id, call) pairs."""

    reasoning: str = ""
    content: str = ""
    calls: list[tuple[str, ToolCall]] = field(default_factory=list)


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request asks of its output beyond plain text."""

    tools: ToolRequest | None = None
    parser: ToolCallParser | None = None            # with the request's tools; also writes past calls
    reasoning: type[ReasoningParser] | None = None  # set when reasoning is separated
    in_reasoning: bool = False                      # the prompt opened the reasoning

    def sampling_values(self, values: dict) -> dict:
        """`values` with what the plan adds: the JSON schema of `required` and named-function calls,
        which no other constraint (response_format, regex, ebnf) may accompany."""
        if self.tools is None or not self.tools.constrained:
            return values
        other = next((k for k in CONSTRAINT_KEYS if values.get(k) is not None), None)
        if other is not None:
            choice = "required" if self.tools.choice == "required" else f"the function '{self.tools.name}'"
            raise APIError(400, f"tool_choice {choice} constrains the output to a call, so it cannot be combined "
                                f"with another constraint ({other}, from response_format or the request)",
                           param="tool_choice")
        return {**values, "json_schema": json.dumps(self.tools.schema(self.parser))}

    def with_prompt(self, prompt: str) -> ChatPlan:
        """The plan for this rendered prompt: does it open the reasoning (DeepSeek-R1's template)?"""
        return replace(self, in_reasoning=self.reasoning is not None and self.reasoning.starts_in_reasoning(prompt))

    def choice_parser(self) -> ChoiceParser:
        calls = None
        if self.tools is not None:
            calls = self.parser.constrained_stream(self.tools.array) if self.tools.constrained else self.parser.stream()
        reasoning = self.reasoning(self.in_reasoning) if self.reasoning is not None else None
        return ChoiceParser(reasoning, calls, self.parser, None if self.tools is None or self.tools.parallel else 1)


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
