"""Tool calling end to end on SmolLM2 (its ChatML template ignores tools: the server's tool prompt
and the hermes parser), through the official clients, on the shared server: `auto` parses free text;
`required` and named functions are constrained by the call's JSON schema, so their calls validate."""
from __future__ import annotations

import json

import jsonschema
import pytest
from test_chat_tools import WEATHER, streamed

ASK = [{"role": "user", "content": "What is the weather like in Paris today? Call the function."}]


def test_the_server_chose_parsers_from_the_template(http):
    parsers = http.get("/get_model_info").json()["chat_parsers"]
    assert parsers["tool_parser"]["name"] == "hermes" and "score 1" in parsers["tool_parser"]["reason"]
    assert parsers["reasoning_parser"]["name"] == "think"
    assert "only when a request asks" in parsers["reasoning_parser"]["reason"]


def test_auto_end_to_end_plain_and_streamed_agree(openai_client, model_name):
    args = dict(model=model_name, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=40)
    resp = openai_client.chat.completions.create(**args)
    choice = resp.choices[0]
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    assert all(name == "get_weather" for name, _ in calls)
    assert choice.finish_reason == ("tool_calls" if calls else choice.finish_reason) in ("tool_calls", "stop", "length")
    assert isinstance(choice.message.content, str) or calls
    content, streamed_calls, finishes = streamed(openai_client.chat.completions.create(**args, stream=True))
    assert content == (choice.message.content or "")
    assert [(n, json.loads(a)) for n, a in streamed_calls] == calls
    assert finishes == [choice.finish_reason]


def test_anthropic_tools_end_to_end(anthropic_client, model_name):
    tool = {"name": "get_weather", "description": "Weather of a city",
            "input_schema": WEATHER["function"]["parameters"]}
    msg = anthropic_client.messages.create(model=model_name, max_tokens=40, messages=ASK, tools=[tool],
                                           extra_body={"temperature": 0})
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert all(b.name == "get_weather" and isinstance(b.input, dict) for b in uses)
    assert msg.stop_reason == ("tool_use" if uses else msg.stop_reason) in ("tool_use", "end_turn", "max_tokens")


TRIP = {"type": "function", "function": {
    "name": "book_trip", "description": "Book a trip",
    "parameters": {"type": "object", "required": ["city", "nights"], "additionalProperties": False, "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "nights": {"type": "integer", "minimum": 1, "maximum": 9}}}}}
CITY = {**WEATHER, "function": {**WEATHER["function"], "parameters": {
    "type": "object", "required": ["city"], "additionalProperties": False,
    "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (TRIP, CITY)}


def valid_calls(message) -> list[tuple[str, dict]]:
    """The calls, each checked against its tool's schema."""
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    for name, args in calls:
        jsonschema.validate(args, SCHEMAS[name])
    return calls


@pytest.mark.parametrize("choice, parallel", [("required", False), ("required", True),
                                              ({"type": "function", "function": {"name": "book_trip"}}, True)])
def test_constrained_calls_validate_and_stream_the_same(openai_client, model_name, choice, parallel):
    args = dict(model=model_name, messages=ASK, tools=[CITY, TRIP], tool_choice=choice, parallel_tool_calls=parallel,
                temperature=0, max_tokens=60)
    resp = openai_client.chat.completions.create(**args)
    calls = valid_calls(resp.choices[0].message)
    assert calls and resp.choices[0].finish_reason == "tool_calls", resp
    assert resp.choices[0].message.content is None
    if isinstance(choice, dict):
        assert [name for name, _ in calls] == ["book_trip"]
    if not parallel:
        assert len(calls) == 1
    content, streamed_calls, finishes = streamed(openai_client.chat.completions.create(**args, stream=True))
    assert content == "" and [(n, json.loads(a)) for n, a in streamed_calls] == calls and finishes == ["tool_calls"]


def test_constrained_call_sampled(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=ASK, tools=[CITY, TRIP], n=3, seed=3,
                                                 tool_choice="required", temperature=1.0, max_tokens=60)
    for choice in resp.choices:
        assert valid_calls(choice.message) and choice.finish_reason == "tool_calls"


def test_anthropic_forced_tool_use(anthropic_client, model_name):
    tool = {"name": "book_trip", "input_schema": SCHEMAS["book_trip"]}
    for choice in ({"type": "any"}, {"type": "tool", "name": "book_trip"}):
        msg = anthropic_client.messages.create(model=model_name, max_tokens=60, messages=ASK, tools=[tool],
                                               tool_choice=choice, extra_body={"temperature": 0})
        assert [b.type for b in msg.content] == ["tool_use"] and msg.stop_reason == "tool_use"
        jsonschema.validate(msg.content[0].input, SCHEMAS["book_trip"])
