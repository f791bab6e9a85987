"""Tool calls and reasoning through the real API layer on a scripted engine (no model), with each
family's chat template, through the official clients."""
from __future__ import annotations

import json
import re

import pytest
from chat_templates import CHATML_NO_TOOLS, LLAMA3, MISTRAL, QWEN, QWEN3, R1
from scripted import ScriptedServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris, and 2+3?"}]
FAMILIES = {  # template, parser it selects, the model's text holding two calls
    "hermes": (QWEN, 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                     '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'),
    "llama3": (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 2, "b": 3}}'),
    "mistral": (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                         '{"name": "add", "arguments": {"a": 2, "b": 3}}]'),
}
EXPECTED = [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]


def calls_of(message) -> list:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def streamed(chunks) -> tuple[str, list, list]:
    """(content, [(name, arguments text)], finish reasons) accumulated from chat chunks."""
    content, calls, finishes = "", {}, []
    for chunk in chunks:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            if d.id is not None:
                assert d.index not in calls, "a call's id and name come once, in its first delta"
                calls[d.index] = [d.function.name, ""]
            calls[d.index][1] += d.function.arguments or ""
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    return content, [tuple(calls[i]) for i in sorted(calls)], finishes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_auto_parses_each_family(family):
    template, text = FAMILIES[family]
    srv = ScriptedServer(template).say(text, piece=4)
    assert srv.parsers.tool.name == family
    client = srv.client()
    resp = client.chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER, ADD])
    msg = resp.choices[0].message
    assert calls_of(msg) == EXPECTED
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.content == ("Checking." if family == "hermes" else None)
    assert len({c.id for c in msg.tool_calls}) == 2
    id_pattern = r"[a-zA-Z0-9]{9}" if family == "mistral" else r"call_[0-9a-f]{24}"  # Mistral's template checks ids
    assert all(re.fullmatch(id_pattern, c.id) for c in msg.tool_calls)
    assert '"get_weather"' in srv.prompt, "a template that takes tools gets them"
    content, calls, finishes = streamed(client.chat.completions.create(model="scripted", messages=ASK,
                                                                        tools=[WEATHER, ADD], stream=True))
    assert content == (msg.content or "")
    assert [(n, json.loads(a)) for n, a in calls] == EXPECTED
    assert finishes == ["tool_calls"]


def test_text_without_calls_is_content():
    srv = ScriptedServer(QWEN).say("No tools needed: it is sunny.")
    resp = srv.client().chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER])
    assert resp.choices[0].message.content == "No tools needed: it is sunny."
    assert resp.choices[0].message.tool_calls is None and resp.choices[0].finish_reason == "stop"


def test_tool_choice_none_neither_prompts_nor_parses():
    srv = ScriptedServer(QWEN).say(FAMILIES["hermes"][1])
    resp = srv.client().chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert resp.choices[0].message.tool_calls is None and "<tool_call>" in resp.choices[0].message.content
    assert "get_weather" not in srv.prompt


def test_history_with_calls_and_results_renders_natively():
    srv = ScriptedServer(QWEN).say("It is 18 C in Paris.")
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    resp = srv.client().chat.completions.create(model="scripted", messages=history, tools=[WEATHER])
    assert resp.choices[0].message.content == "It is 18 C in Paris."
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in srv.prompt
    assert "<|im_start|>tool\n18 C" in srv.prompt


def test_template_without_tools_gets_a_tool_system_prompt():
    srv = ScriptedServer(CHATML_NO_TOOLS).say(FAMILIES["hermes"][1])
    assert srv.parsers.tool.name == "hermes"
    history = ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"}]
    resp = srv.client().chat.completions.create(model="scripted", messages=history, tools=[WEATHER, ADD])
    assert calls_of(resp.choices[0].message) == EXPECTED
    prompt = srv.prompt
    assert prompt.index("<|im_start|>system") < prompt.index('"name": "get_weather"') < prompt.index("<|im_start|>user")
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>' in prompt
    assert "The function add returned:\n2" in prompt


@pytest.mark.parametrize("body, param, words", [
    ({"tool_choice": "auto"}, "tool_choice", "no tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "bad name!"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": {"x": {"type": 3}}}}}]},
     "tools[0].function.parameters", "not a valid JSON schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters", "object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}}}}]}, "tools[0].function.parameters", "nope"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}}}]},
     "tools[0].function.parameters", "only local references"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "twice"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type", "function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "tool_choice", "strict"),
    ({"tools": [WEATHER], "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments", "not valid JSON"),
])
def test_bad_tools_are_400_naming_the_problem(body, param, words):
    srv = ScriptedServer(QWEN).say("x")
    resp = srv.http().post("/v1/chat/completions", json={"model": "scripted", "messages": ASK, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_reasoning_is_separated_for_a_reasoning_template():
    srv = ScriptedServer(QWEN3).say("<think>\nThe user wants Paris.\n</think>\n\nParis is sunny.", piece=2)
    assert srv.parsers.reasoning_by_default
    client = srv.client()
    msg = client.chat.completions.create(model="scripted", messages=ASK).choices[0].message
    assert msg.reasoning_content == "The user wants Paris." and msg.content == "Paris is sunny."
    chunks = list(client.chat.completions.create(model="scripted", messages=ASK, stream=True))
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks) == msg.reasoning_content
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    off = client.chat.completions.create(model="scripted", messages=ASK, extra_body={"separate_reasoning": False})
    assert off.choices[0].message.content.startswith("<think>")
    assert getattr(off.choices[0].message, "reasoning_content", None) is None


def test_reasoning_opened_by_the_template_and_followed_by_a_call():
    text = 'Weather needs a tool.</think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    srv = ScriptedServer(R1).say(text, piece=5)
    assert srv.parsers.reasoning.name == "think" and srv.parsers.reasoning_by_default
    client = srv.client()
    resp = client.chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER])
    msg = resp.choices[0].message
    assert msg.reasoning_content == "Weather needs a tool."
    assert calls_of(msg) == EXPECTED[:1] and msg.content is None and resp.choices[0].finish_reason == "tool_calls"


def test_plain_template_does_not_separate_unless_asked():
    srv = ScriptedServer(CHATML_NO_TOOLS).say("<think>hm</think>Hi")
    assert not srv.parsers.reasoning_by_default
    client = srv.client()
    assert client.chat.completions.create(model="scripted", messages=ASK).choices[0].message.content == "<think>hm</think>Hi"
    asked = client.chat.completions.create(model="scripted", messages=ASK, extra_body={"separate_reasoning": True})
    assert (asked.choices[0].message.reasoning_content, asked.choices[0].message.content) == ("hm", "Hi")


def test_parsers_off_refuse_tools_and_separation():
    srv = ScriptedServer(QWEN3, tool_call_parser="none", reasoning_parser="none").say("x")
    http = srv.http()
    resp = http.post("/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER]})
    assert resp.status_code == 400 and "tool_call_parser" in resp.json()["error"]["message"]
    resp = http.post("/v1/chat/completions", json={"messages": ASK, "separate_reasoning": True})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "separate_reasoning"
    assert http.post("/v1/chat/completions", json={"messages": ASK}).json()["choices"][0]["message"]["content"] == "x"


ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Weather of a city",
                     "input_schema": WEATHER["function"]["parameters"]}


def test_anthropic_tool_use_blocks_plain_and_streamed():
    srv = ScriptedServer(QWEN).say(FAMILIES["hermes"][1], piece=4)
    client = srv.anthropic_client()
    args = dict(model="scripted", max_tokens=100, messages=ASK,
                tools=[ANTHROPIC_WEATHER, {"name": "add", "input_schema": ADD["function"]["parameters"]}])
    msg = client.messages.create(**args)
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[0].text == "Checking."
    assert [(b.name, b.input) for b in msg.content[1:]] == EXPECTED
    assert msg.stop_reason == "tool_use" and all(b.id.startswith("toolu_") for b in msg.content[1:])
    with client.messages.stream(**args) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == EXPECTED
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert final.stop_reason == "tool_use"


def test_anthropic_history_and_choice_mapping():
    srv = ScriptedServer(QWEN).say("18 C.")
    client = srv.anthropic_client()
    history = ASK + [{"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                                     {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                                      "content": [{"type": "text", "text": "timeout"}]}]}]
    msg = client.messages.create(model="scripted", max_tokens=50, messages=history, tools=[ANTHROPIC_WEATHER],
                                 tool_choice={"type": "auto"})
    assert msg.content[0].text == "18 C." and msg.stop_reason == "end_turn"
    assert '"arguments": {"city": "Paris"}' in srv.prompt and "<|im_start|>tool\n18 C" in srv.prompt
    assert "<|im_start|>tool\nError: timeout" in srv.prompt
    resp = srv.http().post("/v1/messages", json={"model": "scripted", "max_tokens": 5, "messages": ASK,
                                                  "tools": [ANTHROPIC_WEATHER], "tool_choice": {"type": "tool"}})
    assert resp.status_code == 400 and resp.json()["error"]["message"].startswith("tool_choice.name")  # Anthropic's shape
    resp = srv.http().post("/v1/messages", json={"model": "scripted", "max_tokens": 5, "messages": ASK,
                                                  "tools": [ANTHROPIC_WEATHER],
                                                  "tool_choice": {"type": "tool", "name": "nope"}})
    assert resp.status_code == 400 and "nope" in resp.json()["error"]["message"]



@pytest.mark.parametrize("choice, parallel, output", [
    ("required", True, '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 2, "b": 3}}]'),
    ("required", False, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    ({"type": "function", "function": {"name": "add"}}, True, '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
])
def test_constrained_choices_send_the_schema_of_a_call_and_parse_it(choice, parallel, output):
    import jsonschema

    srv = ScriptedServer(QWEN).say(output, piece=5)
    client = srv.client()
    args = dict(model="scripted", messages=ASK, tools=[WEATHER, ADD], tool_choice=choice, parallel_tool_calls=parallel)
    resp = client.chat.completions.create(**args)
    schema = json.loads(srv.params.json_schema)
    jsonschema.validate(json.loads(output), schema)
    is_array = schema.get("type") == "array"
    assert is_array == (parallel and choice == "required")
    wrong = {"name": "nope" if isinstance(choice, str) else "get_weather", "arguments": {"city": "Paris"}}
    assert not jsonschema.Draft202012Validator(schema).is_valid([wrong] if is_array else wrong)
    expected = EXPECTED if parallel and choice == "required" else [c for c in EXPECTED if c[0] in output]
    assert calls_of(resp.choices[0].message) == expected and resp.choices[0].message.content is None
    content, calls, finishes = streamed(client.chat.completions.create(**args, stream=True))
    assert content == "" and [(n, json.loads(a)) for n, a in calls] == expected and finishes == ["tool_calls"]


def test_auto_without_parallel_calls_keeps_the_first_call():
    srv = ScriptedServer(QWEN).say(FAMILIES["hermes"][1], piece=6)
    client = srv.client()
    args = dict(model="scripted", messages=ASK, tools=[WEATHER, ADD], parallel_tool_calls=False)
    assert calls_of(client.chat.completions.create(**args).choices[0].message) == EXPECTED[:1]
    content, calls, finishes = streamed(client.chat.completions.create(**args, stream=True))
    assert [(n, json.loads(a)) for n, a in calls] == EXPECTED[:1] and finishes == ["tool_calls"]


@pytest.mark.parametrize("other", [{"regex": "a+"}, {"response_format": {"type": "json_object"}}])
def test_a_constrained_call_refuses_another_constraint(other):
    srv = ScriptedServer(QWEN).say("x")
    resp = srv.http().post("/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER], "tool_choice": "required",
                                                          **other})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tool_choice", resp.text


@pytest.mark.parametrize("path, body, param", [
    ("/api/chat", {"model": "scripted", "messages": ASK, "tools": [WEATHER]}, "tools"),
    ("/api/chat", {"model": "scripted", "messages": ASK, "think": True}, "think"),
    ("/api/generate", {"model": "scripted", "prompt": "Hi", "think": True}, "think"),
    ("/api/generate", {"model": "scripted", "prompt": "", "think": 0}, "think"),  # 0 is no boolean (found by the fuzzer)
    ("/v1/messages", {"model": "scripted", "max_tokens": 5, "messages": ASK,
                      "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
])
def test_tools_and_thinking_where_not_implemented_are_400(path, body, param):
    srv = ScriptedServer(QWEN3).say("x")
    resp = srv.http().post(path, json=body)
    error = resp.json()["error"]
    named = error["message"].startswith(f"{param}: ") if path == "/v1/messages" else error["param"] == param
    assert resp.status_code == 400 and named, resp.text
    off = {"thinking": {"type": "disabled"}, "tools": []}.get(param, False)
    assert srv.http().post(path, json={**body, param: off}).is_success
