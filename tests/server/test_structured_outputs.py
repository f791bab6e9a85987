"""Structured outputs through the HTTP APIs of the shared SmolLM2 server: OpenAI response_format
(chat and completions, through the official client), native /generate constraints and choices,
Ollama `format`, and the 400s for bad constraints."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from server_harness import assert_error

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "is_member": {"type": "boolean"}}, "required": ["name", "is_member"]}


def test_openai_chat_json_schema_strict(openai_client, model_name):
    out = openai_client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=40,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_openai_chat_json_object_streamed(openai_client, model_name):
    stream = openai_client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Give me a JSON object."}], max_tokens=60,
        temperature=0, stream=True, response_format={"type": "json_object"})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict)


def test_openai_completions_response_format_and_regex(http, model_name):
    body = {"model": model_name, "prompt": "A person:", "max_tokens": 40, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), PERSON)
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "Phone:", "max_tokens": 12, "temperature": 0,
                                           "regex": r"[0-9]{3}-[0-9]{4}", "n": 2})
    assert r.status_code == 200, r.text
    assert all(re.fullmatch(r"[0-9]{3}-[0-9]{4}", c["text"]) for c in r.json()["choices"])


def test_generate_native_constraints(http):
    reqs = [({"regex": r"(yes|no)"}, lambda t: re.fullmatch(r"(yes|no)", t)),
            ({"choices": ["red apple", "green pear"]}, lambda t: t in ("red apple", "green pear")),
            ({"json_schema": json.dumps(PERSON), "grammar_backend": "llguidance"},
             lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
            ({"ebnf": 'root ::= "(" [1-9] ("+" [1-9])* ")"'}, lambda t: re.fullmatch(r"\([1-9](\+[1-9])*\)", t))]
    for params, valid in reqs:
        r = http.post("/generate", json={"text": "Answer:", "sampling_params": {**params, "max_new_tokens": 40,
                                                                                "temperature": 0}})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["meta_info"]["finish_reason"]["type"] == "stop" and valid(out["text"]), (params, out["text"])


ECHO = 'Repeat this JSON exactly: {"ok": true}'


@pytest.mark.parametrize("route, extra", [("/api/generate", {"prompt": ECHO}),
                                          ("/api/chat", {"messages": [{"role": "user", "content": ECHO}]})])
def test_ollama_format(http, model_name, route, extra):
    for fmt, check in (("json", lambda v: isinstance(v, dict)), (PERSON, lambda v: jsonschema.validate(v, PERSON) is None)):
        r = http.post(route, json={"model": model_name, "stream": False, "format": fmt,
                                   "options": {"temperature": 0, "num_predict": 60}, **extra})
        assert r.status_code == 200, r.text
        body = r.json()
        text = body["response"] if route == "/api/generate" else body["message"]["content"]
        assert body["done_reason"] == "stop" and check(json.loads(text)), text


BAD = [
    ({"json_schema": {"type": 5}}, "json_schema", None),
    ({"regex": "(ab"}, "regex", "parenthesis"),
    ({"ebnf": "root ::= undefined_rule"}, "ebnf", "undefined_rule"),
    ({"ebnf": 'root ::= "a"', "grammar_backend": "outlines"}, "outlines", "ebnf"),
    ({"json_schema": {"type": "integer", "minimum": 1}, "grammar_backend": "outlines"}, "outlines", "minimum"),
    ({"regex": "a", "grammar_backend": "nope"}, "nope", "xgrammar"),
    ({"regex": "a", "ebnf": 'root ::= "a"'}, "both regex and ebnf", None),
    ({"grammar_backend": "xgrammar"}, "grammar_backend", "has none"),
]


@pytest.mark.parametrize("params, fragment, second", BAD)
def test_bad_constraints_are_400(http, params, fragment, second):
    r = http.post("/generate", json={"text": "x", "sampling_params": {**params, "max_new_tokens": 4}})
    err = assert_error(r, 400)
    assert fragment in err["message"] and (second is None or second in err["message"]), err["message"]


def test_bad_response_format_is_400(http, model_name):
    base = {"model": model_name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    r = http.post("/v1/chat/completions", json={**base, "response_format": {"type": "json_schema",
                                                                             "json_schema": {"name": "x"}}})
    assert_error(r, 400, param="response_format.json_schema.schema")
    r = http.post("/v1/chat/completions", json={**base, "response_format": {"type": "xml"}})
    assert_error(r, 400)
    r = http.post("/v1/chat/completions", json={**base, "response_format": {"type": "json_object"}, "regex": "a"})
    assert "both" in assert_error(r, 400)["message"]
    r = http.post("/api/generate", json={"model": model_name, "prompt": "x", "stream": False, "format": "yaml"})
    assert_error(r, 400)
    # the server is still serving after every refusal
    r = http.post("/generate", json={"text": "x", "sampling_params": {"regex": "(a|b)", "max_new_tokens": 4}})
    assert r.status_code == 200 and r.json()["text"] in ("a", "b")
