"""Tool-call parsers: find the function calls a model wrote in its own format.

A model family writes tool calls its own way: Llama 3 a bare `{"name": ..., "parameters": ...}`,
Qwen and Hermes `<tool_call>{...}</tool_call>`, Mistral `[TOOL_CALLS] [{...}]`. A `ToolCallParser`
knows one such format. It is constructed per request with the request's tools, and gives:

* `stream()`: a `ToolCallStream` that splits one generation, fed as it is detokenized, into plain
  text and call deltas (a call's name first, then fragments of its arguments' JSON text); a
  possible start of a call (`<tool_c`) is held back until it is decided;
* `parse(text)`: the same split of a finished generation (by default the stream, fed at once);
* `constraint_schema(name, parallel)`: the JSON schema a constrained generation must follow when
  the request demands a call (`tool_choice` `required` or a named function); `constrained_stream`
  parses that output;
* `format_calls(calls)`: the calls written in this format (assistant turns of templates without
  tool support, and the conformance kit's round trip);
* `template_score(chat_template)`: how surely a chat template is of this parser's family, so that
  `tool_call_parser = auto` picks the parser from the model's template.
"""
from __future__ import annotations

import json
import uuid
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from jackfield.sdk.component import Component


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict:
        """The OpenAI `tools[i]` shape, which chat templates take as `tools=`."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. `arguments` is the JSON text of the arguments object, as the model wrote it."""

    name: str
    arguments: str

    def arguments_dict(self) -> dict:
        """The arguments as an object ({} when they are not a JSON object)."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class CallDelta:
    """A piece of call number `index` of a generation: its name (first piece only) or more arguments text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class StreamDelta:
    """What one increment of a generation added: plain text and call pieces."""

    text: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def extend(self, other: StreamDelta) -> StreamDelta:
        self.text += other.text
        self.calls += other.calls
        return self


@dataclass(frozen=True)
class ParseResult:
    """A finished generation split into its plain text and its calls."""

    text: str
    calls: tuple[ToolCall, ...] = ()


class ToolCallStream:
    """The incremental parse of one generation. Feed text as it comes; `finish` flushes what is held."""

    @abstractmethod
    def feed(self, text: str) -> StreamDelta:
        """Take the next piece of generated text; return what it decided (text may be held back)."""

    @abstractmethod
    def finish(self) -> StreamDelta:
        """The generation ended: return everything still held back (an unfinished start is text)."""

    def parse(self, text: str) -> ParseResult:
        """The whole `text` at once; calls are assembled from their deltas. Override to treat a call
        cut short as text: a stream has sent its beginning already and cannot take it back."""
        delta = self.feed(text).extend(self.finish())
        return ParseResult(delta.text, merge_calls(delta.calls))


def merge_calls(deltas: Sequence[CallDelta]) -> tuple[ToolCall, ...]:
    """Assemble calls from their deltas: the name of each index, its argument pieces concatenated."""
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    for d in deltas:
        if d.name is not None:
            names[d.index] = d.name
        args[d.index] = args.get(d.index, "") + d.arguments
    return tuple(ToolCall(names[i], args.get(i, "")) for i in sorted(names))


class ToolCallParser(Component):
    """Base class of tool-call parsers. One instance per request, holding the request's tools."""

    kind: ClassVar[str] = "tool_parser"
    template_markers: ClassVar[tuple[str, ...]] = ()
    """Strings whose presence in a chat template marks this parser's family (`template_score`)."""
    arguments_key: ClassVar[str] = "arguments"
    """The key that holds a call's arguments in this family's JSON (Llama 3: `parameters`)."""

    def __init__(self, tools: Sequence[Tool]):
        self.tools = tuple(tools)

    @classmethod
    def template_score(cls, chat_template: str | None) -> int:
        """How surely `chat_template` belongs to this family: 0 not at all, higher is surer.

        The default counts the `template_markers` found in it; `tool_call_parser = auto` takes the
        parser with the highest score (ties and all-zero go to the highest `priority`)."""
        return sum(marker in (chat_template or "") for marker in cls.template_markers)

    @abstractmethod
    def stream(self) -> ToolCallStream:
        """A fresh incremental parse of one generation written freely in this format."""

    @abstractmethod
    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        """The calls as this family's model writes them; `parse` of the result gives them back."""

    def parse(self, text: str) -> ParseResult:
        """Split a finished generation into plain text and calls."""
        return self.stream().parse(text)

    def new_call_id(self) -> str:
        """A fresh id for a parsed call. Clients send it back in the history, so a family whose chat
        template checks ids (Mistral's wants 9 letters or digits) overrides this."""
        return f"call_{uuid.uuid4().hex[:24]}"

    # ---- constrained calls (tool_choice "required" or a named function) -----------------------
    def call_object(self, call: ToolCall) -> dict:
        """A call as the JSON object that `constraint_schema` describes."""
        return {"name": call.name, self.arguments_key: call.arguments_dict()}

    def constraint_schema(self, name: str | None = None, parallel: bool = False) -> dict:
        """The JSON schema that a constrained generation follows: one call object of `name` (or of any
        tool when None), or with `parallel` an array of at least one call object. The tools'
        definitions move to the root and their other local references follow them (`call_schema`);
        two tools defining one name differently raise ValueError."""
        from jackfield.sdk.call_schema import call_schema

        chosen = [t for t in self.tools if name is None or t.name == name]
        if name is not None and not chosen:
            raise ValueError(f"no tool named {name!r}")
        return call_schema(chosen, self.arguments_key, parallel)

    def constrained_stream(self, parallel: bool = False) -> ToolCallStream:
        """The incremental parse of a generation constrained by `constraint_schema(..., parallel)`."""
        from jackfield.sdk.json_calls import JsonCallFormat, JsonCallStream

        return JsonCallStream(JsonCallFormat(bare_start=True, array=parallel, arguments_key=self.arguments_key))

    # ---- prompts of chat templates without tool support ----------------------------------------
    def system_prompt(self) -> str:
        """Tells the model the tools and how to call them, for chat templates that ignore `tools=`."""
        listed = "\n".join(json.dumps(t.as_openai()["function"], ensure_ascii=False) for t in self.tools)
        example = self.format_calls([ToolCall(self.tools[0].name, "{}")]) if self.tools else ""
        return ("You can call these functions (JSON schemas of their arguments):\n" + listed +
                "\nTo call a function, answer with the call and nothing else, written as:\n" + example +
                "\nwith the arguments filled in. If no function fits, answer normally.")
