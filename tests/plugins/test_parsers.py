"""Tool-call and reasoning parser plugins: each passes its kind's kit; each reads its family's text."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.sdk import JsonCallFormat, JsonToolCallParser, Tool, ToolCall
from jackfield.testing import certify
from jackfield_plugins.parsers.hermes import HermesParser
from jackfield_plugins.parsers.llama3 import Llama3JsonParser
from jackfield_plugins.parsers.mistral import MistralParser
from jackfield_plugins.parsers.think import ThinkTagParser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from chat_templates import CHATML_NO_TOOLS, LLAMA3, MISTRAL, QWEN, QWEN3, R1  # noqa: E402

REGISTRY = build_registry(*load_plugins())
TOOLS = [Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})]


def parsers(kind: str) -> list:
    return [info.cls for info in REGISTRY.of_kind(kind)]


@pytest.mark.parametrize("cls", parsers("tool_parser") + parsers("reasoning_parser"), ids=lambda c: c.name)
def test_every_parser_plugin_passes_the_kit(cls):
    report = certify(cls)
    assert report.ok, report.format()
    assert report.count("passed") >= 10


def test_the_built_in_parsers_are_registered():
    assert {c.name for c in parsers("tool_parser")} >= {"hermes", "llama3", "mistral"}
    assert {c.name for c in parsers("reasoning_parser")} >= {"think"}


class DropsTheLastCall(JsonToolCallParser):
    name = "drops_last"
    format = JsonCallFormat(start="<call>", end="</call>")

    def format_calls(self, calls):
        return super().format_calls(calls[:-1] if len(calls) > 1 else calls)


class LeaksStartMarker(JsonToolCallParser):
    """Holds nothing back: a cut start marker goes out as text and is then taken back."""

    name = "leaks_marker"
    format = JsonCallFormat(start="<call>", end="</call>")

    def stream(self):
        stream = super().stream()
        feed = stream.feed

        def feed_now(text):
            out = feed(text)
            if stream.state == "text" and stream.pos < len(stream.buf):
                out.text += stream.buf[stream.pos:]
                stream.pos = len(stream.buf)
            return out

        stream.feed = feed_now
        return stream


@pytest.mark.parametrize("cls, behaviour", [(DropsTheLastCall, "format_calls then parse"),
                                            (LeaksStartMarker, "streaming in random chunks")])
def test_the_kit_fails_a_broken_parser(cls, behaviour):
    report = certify(cls)
    assert not report.ok
    assert any(r.behaviour.startswith(behaviour) for r in report.failures()), report.format()


# What models of each family write (shapes from their model cards and chat templates).
FAMILY_TEXT = [
    (HermesParser, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', ""),
    (HermesParser, 'I will look it up.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                   '</tool_call>', "I will look it up."),
    (Llama3JsonParser, '{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
    (Llama3JsonParser, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
    (Llama3JsonParser, '{"name": "get_weather", "arguments": {"city": "Paris"}}', ""),
    (MistralParser, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),
    (MistralParser, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),
    (MistralParser, ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),  # control token skipped
    (HermesParser, '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>', ""),
]


@pytest.mark.parametrize("cls, text, rest", FAMILY_TEXT)
def test_family_text_parses(cls, text, rest):
    got = cls(TOOLS).parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in got.calls] == [("get_weather", {"city": "Paris"})]
    assert got.text == rest


@pytest.mark.parametrize("cls, text", [
    (HermesParser, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'),  # cut by max_tokens
    (HermesParser, "<tool_call>not json</tool_call>"),
    (HermesParser, 'Let me check. \n<tool_call>{"name": "get_weather", "argu'),  # the space before it too
    (MistralParser, "Sure: [TOOL_CALLS] oops"),
    (Llama3JsonParser, '{"name": 3, "parameters": {}}'),
    (MistralParser, "[TOOL_CALLS] [oops]"),
])
def test_malformed_calls_come_back_as_text(cls, text):
    got = cls(TOOLS).parse(text)
    assert got.calls == () and got.text == text


def test_constraint_schema_moves_the_references_of_a_tool():
    import jsonschema

    tree = Tool("tree", "", {"type": "object", "definitions": {"v": {"type": "integer"}}, "properties": {
        "value": {"$ref": "#/definitions/v"}, "copy": {"$ref": "#/properties/value"},
        "kids": {"type": "array", "items": {"$ref": "#"}}}})
    other = Tool("other", "", {"type": "object", "properties": {"x": {"type": "string"}}})
    for parallel in (False, True):
        schema = Llama3JsonParser([other, tree]).constraint_schema(None, parallel)
        good = {"name": "tree", "parameters": {"value": 1, "copy": 2, "kids": [{"value": 3, "kids": [{"copy": 4}]}]}}
        bad = {"name": "tree", "parameters": {"value": 1, "kids": [{"kids": [{"copy": "x"}]}]}}
        wrap = (lambda c: [c]) if parallel else (lambda c: c)
        assert jsonschema.Draft202012Validator(schema).is_valid(wrap(good))
        assert not jsonschema.Draft202012Validator(schema).is_valid(wrap(bad))
        assert "anyOf/" not in json.dumps(schema), "no reference path through an array index (outlines-core)"
    with pytest.raises(ValueError, match="definitions"):
        HermesParser([Tool("t", "", {"type": "object", "definitions": [1]})]).constraint_schema(None)


def test_constraint_schema_of_a_named_function_and_defs():
    tools = [Tool("a", "", {"type": "object", "$defs": {"d": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/d"}}}),
             Tool("b", "", {"type": "object", "$defs": {"d": {"type": "string"}}})]
    schema = HermesParser(tools).constraint_schema("a")
    assert schema["properties"]["name"] == {"type": "string", "enum": ["a"]} and schema["$defs"] == {"d": {"type": "integer"}}
    with pytest.raises(ValueError, match="differently"):
        HermesParser(tools).constraint_schema(None)
    assert Llama3JsonParser(tools[:1]).constraint_schema("a")["required"] == ["name", "parameters"]


@pytest.mark.parametrize("template, tool, reasoning, by_default", [
    (QWEN, "hermes", "think", False), (LLAMA3, "llama3", "think", False), (MISTRAL, "mistral", "think", False),
    (CHATML_NO_TOOLS, "hermes", "think", False), (QWEN3, "hermes", "think", True), (R1, "hermes", "think", True),
    (None, "hermes", "think", False),
])
def test_auto_selection_from_the_chat_template(template, tool, reasoning, by_default):
    from jackfield.config import Settings
    from jackfield.server.parsers import select_parsers

    chosen = select_parsers(REGISTRY, Settings(), template)
    assert (chosen.tool.name, chosen.reasoning.name, chosen.reasoning_by_default) == (tool, reasoning, by_default)


def test_named_and_unknown_parser_settings():
    from jackfield.config import Settings
    from jackfield.selection import SelectionError
    from jackfield.server.parsers import select_parsers

    chosen = select_parsers(REGISTRY, Settings(tool_call_parser="mistral", reasoning_parser="think"), QWEN)
    assert chosen.tool is MistralParser and chosen.reasoning_by_default
    off = select_parsers(REGISTRY, Settings(tool_call_parser="none", reasoning_parser="none"), QWEN3)
    assert off.tool is None and off.reasoning is None and not off.reasoning_by_default
    with pytest.raises(SelectionError, match="hermes"):
        select_parsers(REGISTRY, Settings(tool_call_parser="qwen9"), QWEN)


def test_reasoning_opened_by_the_prompt():
    assert ThinkTagParser.starts_in_reasoning("<｜Assistant｜><think>\n")
    assert not ThinkTagParser.starts_in_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ThinkTagParser(in_reasoning=True).parse("a\n</think>\n\nb").content == "b"
    assert ThinkTagParser().parse("a</think>b").content == "a</think>b"


def test_format_calls_of_each_family():
    call = [ToolCall("f", '{"x": 1}')]
    assert HermesParser([]).format_calls(call) == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert Llama3JsonParser([]).format_calls(call * 2) == '{"name": "f", "parameters": {"x": 1}}; ' * 1 + \
        '{"name": "f", "parameters": {"x": 1}}'
    assert MistralParser([]).format_calls(call) == '[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}]'
