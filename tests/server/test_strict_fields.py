"""Nothing accepted and silently ignored: a request field the server does not implement is a 400 in
the OpenAI error shape naming it, on every route; a JSON body is JSON whatever its Content-Type."""
from __future__ import annotations

import json

import pytest
from server_harness import assert_error

MSGS = [{"role": "user", "content": "Hi"}]
ROUTES = [
    ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 1}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
    ("/v1/embeddings", {"input": "Hi"}),
    ("/v1/messages", {"model": "", "max_tokens": 1, "messages": MSGS}),
    ("/v1/messages/count_tokens", {"model": "", "messages": MSGS}),
    ("/api/generate", {"model": "", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}),
    ("/api/chat", {"model": "", "messages": MSGS, "stream": False, "options": {"num_predict": 1}}),
    ("/api/embed", {"model": "", "input": "Hi"}),
    ("/api/show", {"model": ""}),
    ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}),
    ("/tokenize", {"prompt": "Hi"}),
    ("/detokenize", {"tokens": [504]}),
]


@pytest.mark.parametrize("path,body", ROUTES, ids=[r[0] for r in ROUTES])
def test_every_route_names_an_unknown_field(http, path, body):
    assert http.post(path, json=body).status_code == 200  # the body without it is fine
    err = assert_error(http.post(path, json={**body, "frobnicate": 1}), 400, param="frobnicate")
    assert "frobnicate" in err["message"] and "not implemented" in err["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": MSGS, "json_schema": "{}"}, "json_schema"),  # SGLang's is in response_format
    ("/v1/chat/completions", {"messages": MSGS, "response_format": {"type": "json_object", "x": 1}}, "response_format.x"),
    ("/v1/completions", {"prompt": "Hi", "response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {}, "x": 1}}}, "response_format.json_schema.x"),
    ("/generate", {"text": "Hi", "sampling_params": {"json_schema": "{}", "frobnicate": 1}}, "sampling_params.frobnicate"),
    ("/api/chat", {"model": "", "messages": MSGS, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/api/chat", {"model": "", "messages": MSGS, "options": {"num_ctx": 4096}}, "options.num_ctx"),
    ("/api/chat", {"model": "", "messages": MSGS, "keep_alive": "5m"}, "keep_alive"),
    ("/v1/messages", {"model": "", "max_tokens": 1, "messages": MSGS, "thinking": {"type": "enabled"}}, "thinking"),
    ("/v1/chat/completions", {"messages": [{**MSGS[0], "audio": {"id": "x"}}]}, "messages.0.audio"),
    ("/v1/chat/completions", {"messages": MSGS, "stream": True, "stream_options": {"continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    ("/v1/completions", {"prompt": "Hi", "suffix": "!"}, "suffix"),
])
def test_unimplemented_features_are_refused(http, path, body, param):
    assert_error(http.post(path, json=body), 400, param=param)


def test_client_metadata_is_accepted(http, anthropic_client, model_name):
    assert http.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 1, "user": "u-1"}).status_code == 200
    msg = anthropic_client.messages.create(
        model=model_name, max_tokens=1, metadata={"user_id": "u-1"},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}])
    assert msg.usage.output_tokens == 1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path,body", [ROUTES[3], ROUTES[10]], ids=lambda x: str(x)[:20])
def test_a_json_body_needs_no_json_content_type(http, path, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    req = http.build_request("POST", path, content=json.dumps(body).encode(), headers=headers)
    assert req.headers.get("content-type") == content_type
    assert http.send(req).status_code == 200


def test_the_openapi_schema_describes_the_request_models(http):
    schema = http.get("/openapi.json").json()
    assert schema["components"]["schemas"]["ChatCompletionRequest"]["additionalProperties"] is False
    assert {"/v1/embeddings", "/v1/batches", "/v1/files", "/tokenize"} <= set(schema["paths"])
