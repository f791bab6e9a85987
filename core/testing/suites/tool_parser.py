"""The tool_parser suite: a parser reads back what it writes, streams what it parses, and keeps
plain text intact; its constraint schema accepts the calls it parses.

Pure Python, no device: every check runs wherever the kit runs. Streaming is checked on random
splits of the text (fixed seeds), and at every step the text sent so far must be a beginning of the
final text (a stream can never take text back).
"""
from __future__ import annotations

import json

from jackfield.sdk.tool_parser import ParseResult, StreamDelta, Tool, ToolCall, ToolCallParser, merge_calls
from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.streaming import fed_in_chunks

TOOLS = (
    Tool("get_weather", "Current weather of a city", {
        "type": "object", "required": ["city"],
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}),
    Tool("add", "Add two integers", {
        "type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}),
    Tool("search", "Search with filters", {
        "type": "object", "required": ["query"], "$defs": {"range": {"type": "array", "items": {"type": "number"},
                                                                     "minItems": 2, "maxItems": 2}},
        "properties": {"query": {"type": "string"}, "filters": {"type": "object", "properties": {
            "tags": {"type": "array", "items": {"type": "string"}}, "price": {"$ref": "#/$defs/range"}}}}}),
)
CALLS = (
    ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}'),
    ToolCall("add", '{"a": 2, "b": -40}'),
    ToolCall("search", json.dumps({"query": 'quote " brace } bracket ] tag <tool_call> and \\ \u00e9\u4e2d',
                                   "filters": {"tags": ["a", "b"], "price": [1.5, 20]}}, ensure_ascii=False)),
    ToolCall("get_weather", '{"city": "S\\u00e3o Paulo"}'),
)
PLAIN_TEXTS = ("Hello! How can I help you today?", "The answer is 42.\n", "a < b, c > d, [x] and {y}; z",
               "  indented\n\nlines  ", "{not a call} but braces", "[1, 2, 3] is a list", "")
SEEDS = range(8)


def _parser(t: KitTarget) -> ToolCallParser:
    return t.cls(TOOLS)


def _same_calls(got, want) -> bool:
    return [(c.name, json.loads(c.arguments)) for c in got] == [(c.name, json.loads(c.arguments)) for c in want]


def stream_in_chunks(stream, text: str, seed: int, final_text: str | None = None) -> StreamDelta:
    """Feed `text` in random pieces of 1-8 characters; check that sent text only ever grows toward
    `final_text` and that each call's name comes before its arguments."""
    out, named = StreamDelta(), set()
    for delta in fed_in_chunks(stream, text, seed):
        for piece in delta.calls:
            expect(piece.name is not None or piece.index in named,
                   f"call {piece.index} got arguments {piece.arguments!r} before its name")
            named.add(piece.index)
        out.extend(delta)
        if final_text is not None:
            expect(final_text.startswith(out.text), f"streamed text {out.text!r} is not a beginning of the "
                                                    f"parsed text {final_text!r} (a stream cannot take text back)")
    return out


def _round_trip(t: KitTarget) -> None:
    parser = _parser(t)
    for calls in (CALLS[:1], CALLS[1:2], CALLS[:3], CALLS):
        text = parser.format_calls(calls)
        got = parser.parse(text)
        expect(isinstance(got, ParseResult), f"parse returned {type(got).__name__}, not a ParseResult")
        expect(_same_calls(got.calls, calls), f"format_calls then parse gave {got.calls!r}, not {calls!r}\n"
                                              f"(the text was {text!r})")
        expect(got.text.strip() == "", f"parsing {text!r} left plain text {got.text!r}")


def _streaming_equals_parse(t: KitTarget) -> None:
    parser = _parser(t)
    for calls in (CALLS[:1], CALLS):
        for text in (parser.format_calls(calls), "Let me check that. " + parser.format_calls(calls)):
            whole = parser.parse(text)
            for seed in SEEDS:
                got = stream_in_chunks(parser.stream(), text, seed, whole.text)
                expect(got.text == whole.text, f"streamed text {got.text!r} != parsed text {whole.text!r} "
                                               f"(seed {seed}, text {text!r})")
                expect(merge_calls(got.calls) == whole.calls,
                       f"streamed calls {merge_calls(got.calls)!r} != parsed calls {whole.calls!r} (seed {seed})")


def _plain_text_passes(t: KitTarget) -> None:
    parser = _parser(t)
    for text in PLAIN_TEXTS:
        got = parser.parse(text)
        expect(got == ParseResult(text, ()), f"plain text {text!r} parsed as {got!r}")
        for seed in SEEDS[:3]:
            streamed = stream_in_chunks(parser.stream(), text, seed, text)
            expect(streamed.text == text and not streamed.calls, f"plain text {text!r} streamed as {streamed!r}")


def _schema_accepts_calls(t: KitTarget) -> None:
    import jsonschema

    parser = _parser(t)
    for call in CALLS:
        obj = parser.call_object(call)
        for name in (call.name, None):
            schema = parser.constraint_schema(name)
            jsonschema.Draft202012Validator.check_schema(schema)
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
            expect(not errors, f"constraint_schema({name!r}) rejects {obj}: {errors[:1]}")
    array = [parser.call_object(c) for c in CALLS]
    errors = list(jsonschema.Draft202012Validator(parser.constraint_schema(None, True)).iter_errors(array))
    expect(not errors, f"constraint_schema(parallel=True) rejects {array}: {errors[:1]}")
    wrong = {**parser.call_object(CALLS[0]), "name": "no_such_tool"}
    expect(not jsonschema.Draft202012Validator(parser.constraint_schema(None)).is_valid(wrong),
           "constraint_schema accepts a call of a function that is not among the tools")


def _constrained_output_parses(t: KitTarget) -> None:
    parser = _parser(t)
    for parallel, calls in ((False, CALLS[:1]), (False, CALLS[2:3]), (True, CALLS[:1]), (True, CALLS)):
        objects = [parser.call_object(c) for c in calls]
        text = json.dumps(objects if parallel else objects[0], ensure_ascii=False)
        whole = parser.constrained_stream(parallel).parse(text)
        expect(_same_calls(whole.calls, calls) and whole.text == "",
               f"constrained output {text!r} (parallel={parallel}) parsed as {whole!r}")
        for seed in SEEDS[:4]:
            got = stream_in_chunks(parser.constrained_stream(parallel), text, seed, "")
            expect(merge_calls(got.calls) == whole.calls, f"constrained output streamed as {got.calls!r} (seed {seed})")


def _template_score(t: KitTarget) -> None:
    for template in (None, ""):
        score = t.cls.template_score(template)
        expect(isinstance(score, int) and score == 0, f"template_score({template!r}) is {score!r}, not 0")


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("format_calls then parse gives the calls back (1 to 4 calls, escapes, unicode)", _round_trip),
        Check("streaming in random chunks equals parsing at once, name before arguments, no text taken back",
              _streaming_equals_parse),
        Check("text without calls passes through unchanged, streamed and at once", _plain_text_passes),
        Check("the constraint schema accepts the parsed calls and rejects unknown functions", _schema_accepts_calls),
        Check("output that follows the constraint schema parses back to its calls, streamed too",
              _constrained_output_parses),
        Check("scores an empty chat template 0", _template_score),
    ]
