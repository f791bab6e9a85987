"""Tool calling end to end on SmolLM2 (its ChatML template ignores tools: the server's tool prompt
and the hermes parser), through the official clients, on the shared server."""
from __future__ import annotations

import json

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
