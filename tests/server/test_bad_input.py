"""Every bad input gets a 4xx in the OpenAI error shape, never a 500 or a traceback."""
from __future__ import annotations

import json

import pytest
from server_harness import assert_error

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "Hi"}]
LONG_PROMPT = "hello " * 9000  # over SmolLM2's 8192-token context


def test_malformed_json(http):
    resp = http.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert "malformed JSON" in assert_error(resp, 400)["message"]


@pytest.mark.parametrize("path,body", [
    (CHAT, {"model": "gpt-17", "messages": MSGS}),
    ("/v1/completions", {"model": "gpt-17", "prompt": "Hi"}),
    ("/v1/messages", {"model": "gpt-17", "max_tokens": 4, "messages": MSGS}),
    ("/api/chat", {"model": "gpt-17", "messages": MSGS}),
])
def test_unknown_model_is_404(http, path, body):
    assert_error(http.post(path, json=body), 404, param="model", code="model_not_found")


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSGS, "max_tokens": -1}, "max_tokens"),
    (CHAT, {"messages": [{"role": "user", "content": LONG_PROMPT}]}, "messages"),
    ("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 1}, "prompt"),
    ("/generate", {"text": LONG_PROMPT}, "text"),
    (CHAT, {"messages": MSGS, "temperature": -1}, "temperature"),
    (CHAT, {"messages": MSGS, "top_p": 2}, "top_p"),
    (CHAT, {"messages": MSGS, "presence_penalty": 5}, "presence_penalty"),
    (CHAT, {"messages": MSGS, "logit_bias": {"99999999": 1}}, "logit_bias"),
    (CHAT, {"messages": MSGS, "top_logprobs": 3}, "top_logprobs"),
    (CHAT, {"messages": MSGS, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    (CHAT, {"messages": MSGS, "n": 0}, "n"),
    (CHAT, {"messages": MSGS, "n": 1000}, "n"),
    ("/generate", {"text": "Hi", "sampling_params": {"n": 1000}}, "sampling_params.n"),
    (CHAT, {}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": MSGS, "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": [1, -5]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 99999999]]}, "prompt[0]"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/messages", {"model": "", "messages": MSGS}, "max_tokens"),
    ("/v1/messages", {"model": "", "max_tokens": 4, "messages": MSGS, "temperature": -3}, "temperature"),
    ("/generate", {"text": "Hi", "sampling_params": {"warmth": 1}}, "sampling_params.warmth"),
    ("/generate", {"text": "Hi", "input_ids": [1]}, "text"),
    ("/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": -2}},
     "sampling_params.max_new_tokens"),
])
def test_bad_values_are_400_naming_the_param(http, path, body, param):
    assert_error(http.post(path, json=body), 400, param=param)


def test_context_overflow_explains_the_numbers(http):
    err = assert_error(http.post("/v1/completions", json={"prompt": LONG_PROMPT, "max_tokens": 10}), 400,
                       code="context_length_exceeded")
    assert "8192" in err["message"]


def test_lone_surrogates_are_400(http):
    """Found by the fuzzer: a lone surrogate in a text crashed the tokenizer (a 500)."""
    def post(path: str, body: dict):  # json.dumps escapes the surrogate; httpx's json= cannot encode it
        return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})

    resp = post("/v1/completions", {"prompt": "a\ud800b", "max_tokens": 1})
    # refused by validation (a length-constrained string) or by the tokenizer: either message says why
    assert "unicode" in assert_error(resp, 400, param="prompt")["message"].lower()
    assert_error(post(CHAT, {"messages": [{"role": "user", "content": "\udbcc"}]}), 400, param="messages")


@pytest.mark.parametrize("path,body,param", [
    ("/generate", {"input_ids": [None, None]}, "input_ids"),
    ("/v1/completions", {"prompt": [1, None]}, "prompt"),
    ("/v1/completions", {"prompt": [[None]]}, "prompt"),
])
def test_null_token_ids_are_400(http, path, body, param):
    assert_error(http.post(path, json=body), 400, param=param)


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_non_object_body(http):
    assert_error(http.post(CHAT, json=[1, 2, 3]), 400)
