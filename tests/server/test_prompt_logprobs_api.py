"""Prompt logprobs over HTTP: /v1/completions `echo` (OpenAI's and vLLM's shape) and the native
API's `logprob_start_len` (SGLang's). The values themselves are checked against transformers in
tests/engine/test_prompt_readout.py; here the shapes, the agreement between routes and bad input."""
from __future__ import annotations

import pytest
from server_harness import assert_error

PROMPT = "The capital of France is"


def test_echo_with_logprobs(http):
    out = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 2,
                                             "temperature": 0}).json()
    choice = out["choices"][0]
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    lps = choice["logprobs"]
    assert choice["text"].startswith(PROMPT) and len(choice["text"]) > len(PROMPT)
    assert len(lps["tokens"]) == len(ids) + 3 == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lps["token_logprobs"][1:])
    assert all(len(top) <= 2 and max(top.values()) >= lp - 1e-6
               for top, lp in zip(lps["top_logprobs"][1:], lps["token_logprobs"][1:]))
    assert "".join(lps["tokens"]) == choice["text"]
    assert lps["text_offset"] == [sum(len(t) for t in lps["tokens"][:i]) for i in range(len(lps["tokens"]))]
    plain = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0}).json()
    assert choice["text"] == PROMPT + plain["choices"][0]["text"]


def test_echo_with_max_tokens_0_returns_the_prompt_logprobs_only(http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    out = http.post("/v1/completions", json={"prompt": [ids, ids[:3]], "max_tokens": 0, "echo": True,
                                             "logprobs": 0}).json()
    first, second = out["choices"]
    assert first["text"] == PROMPT and first["finish_reason"] == "length"
    assert len(first["logprobs"]["token_logprobs"]) == len(ids) and len(second["logprobs"]["token_logprobs"]) == 3
    assert second["logprobs"]["token_logprobs"][1:] == pytest.approx(first["logprobs"]["token_logprobs"][1:3], abs=1e-4)
    assert out["usage"]["completion_tokens"] == 0
    echo_only = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 0, "echo": True}).json()
    assert echo_only["choices"][0]["text"] == PROMPT and echo_only["choices"][0]["logprobs"] is None


def test_streamed_echo_starts_with_the_prompt(openai_client, model_name):
    chunks = list(openai_client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2, echo=True,
                                                   logprobs=1, temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith(PROMPT)
    first = next(c for c in chunks if c.choices and c.choices[0].logprobs)
    assert first.choices[0].logprobs.token_logprobs[0] is None
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert "".join(tokens) == text


def test_native_input_logprobs_agree_with_echo(http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    native = http.post("/generate", json={"input_ids": ids, "return_logprob": True, "logprob_start_len": 0,
                                          "top_logprobs_num": 2, "sampling_params": {"max_new_tokens": 1,
                                                                                     "temperature": 0}}).json()
    meta = native["meta_info"]
    inputs = meta["input_token_logprobs"]
    assert [e[1] for e in inputs] == ids and inputs[0][0] is None and meta["input_top_logprobs"][0] is None
    assert all(len(top) == 2 and top[0][0] >= e[0] - 1e-6 for top, e in zip(meta["input_top_logprobs"][1:], inputs[1:]))
    echo = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    assert [e[0] for e in inputs[1:]] == pytest.approx(echo["choices"][0]["logprobs"]["token_logprobs"][1:], abs=1e-5)
    late = http.post("/generate", json={"input_ids": ids, "return_logprob": True, "logprob_start_len": 3,
                                        "return_text_in_logprobs": False,
                                        "sampling_params": {"max_new_tokens": 0}}).json()["meta_info"]
    assert [e[1] for e in late["input_token_logprobs"]] == ids[3:]
    assert [e[0] for e in late["input_token_logprobs"]] == pytest.approx([e[0] for e in inputs[3:]], abs=1e-5)
    assert all(e[2] is None for e in late["input_token_logprobs"])


@pytest.mark.parametrize("body,param", [
    ({"prompt": PROMPT, "echo": True, "n": 2}, "echo"),
    ({"prompt": PROMPT, "echo": True, "best_of": 1}, "best_of"),
    ({"prompt": PROMPT, "best_of": 3}, "best_of"),
    ({"prompt": PROMPT, "echo": True, "logprobs": 21}, "logprobs"),
])
def test_bad_echo_requests(http, body, param):
    assert_error(http.post("/v1/completions", json=body), 400, param=param)


@pytest.mark.parametrize("body", [
    {"text": PROMPT, "logprob_start_len": 0},                              # without return_logprob
    {"text": PROMPT, "return_logprob": True, "logprob_start_len": 99},     # past the prompt
    {"text": PROMPT, "return_logprob": True, "logprob_start_len": -2},
])
def test_bad_logprob_start_len(http, body):
    assert_error(http.post("/generate", json=body), 400, param="logprob_start_len")
