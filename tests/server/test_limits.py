"""Admission limits on a server with a 64-token context, 2 running + 2 queued requests and a
20 kB body limit: queue overflow is 503 + Retry-After, big bodies 413, prompts that cannot fit 400
(long texts before tokenizing), max_tokens clamped to the context, per-request timeouts 408; and
CORS for the one allowed origin only."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from server_harness import assert_error, start_server

CONTEXT = 64
GOOD_ORIGIN = "http://good.example"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("limited"), "--kv-cache-bytes", "268435456", "--no-warmup",
                       "--context-length", str(CONTEXT), "--max-running-requests", "2", "--max-queued-requests", "2",
                       "--max-request-bytes", "20000", "--allowed-origins", GOOD_ORIGIN,
                       env={"OMP_NUM_THREADS": "1"})
    yield srv
    srv.kill()


def wait_idle(url: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = httpx.get(url + "/get_server_info").json()
        if info["requests_in_flight"] == 0 and info["num_running"] == 0 and info["num_waiting"] == 0:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.1)


def test_queue_limit_under_a_burst(limited):
    codes: list[int] = []

    def hold() -> None:  # 2 x 24 decode steps at batch 2: seconds for the burst to arrive in, on any machine
        body = {"text": "Hi", "sampling_params": {"max_new_tokens": 24, "ignore_eos": True}}
        codes.append(httpx.post(limited.url + "/generate", json=body, timeout=60).status_code)

    holders = [threading.Thread(target=hold) for _ in range(4)]
    for t in holders:
        t.start()
    deadline = time.monotonic() + 30
    while httpx.get(limited.url + "/get_server_info").json()["requests_in_flight"] < 4:  # 2 running, 2 queued
        assert time.monotonic() < deadline and not codes, codes
    burst: list[httpx.Response] = []
    senders = [threading.Thread(target=lambda: burst.append(httpx.post(
        limited.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30))) for _ in range(3)]
    for t in senders:  # while the four holders still generate
        t.start()
    for t in senders + holders:
        t.join(60)
    assert len(burst) == 3
    assert codes == [200] * 4
    for resp in burst:
        assert_error(resp, 503, code="queue_full")
        assert resp.headers["retry-after"] == "1"
    wait_idle(limited.url)
    assert httpx.post(limited.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_body_size_limit(limited):
    big = {"prompt": "x" * 30000, "max_tokens": 1}
    assert_error(httpx.post(limited.url + "/v1/completions", json=big), 413)

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    resp = httpx.post(limited.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_error(resp, 413)


@pytest.mark.parametrize("path,body,param", [
    ("/generate", {"input_ids": list(range(10, 10 + CONTEXT))}, "input_ids"),
    ("/v1/completions", {"prompt": "hello " * 200}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "z" * 19000}]}, "messages"),
])
def test_prompts_that_cannot_fit_are_400(limited, path, body, param):
    err = assert_error(httpx.post(limited.url + path, json=body), 400, param=param, code="context_length_exceeded")
    assert str(CONTEXT) in err["message"]
    if "z" * 100 in str(body):  # longer than 64 tokens of the longest token could be: never tokenized
        assert "characters" in err["message"]


def test_max_tokens_is_clamped_to_the_context(limited):
    out = httpx.post(limited.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True},
                     timeout=60).json()
    usage = out["usage"]
    assert out["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT


def test_request_timeout(limited):
    body = {"prompt": "Hi", "max_tokens": 50, "ignore_eos": True, "timeout": 0.2}
    err = assert_error(httpx.post(limited.url + "/v1/completions", json=body, timeout=30), 408)
    assert err["type"] == "timeout_error" and "0.2 s" in err["message"]
    with httpx.stream("POST", limited.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as resp:
        last_event = [line for line in resp.iter_lines() if line.startswith("data: {")][-1]
    assert "timeout_error" in last_event
    assert_error(httpx.post(limited.url + "/v1/completions", json={**body, "timeout": 0}), 400, param="timeout")
    assert wait_idle(limited.url)["kv_used_tokens"] == 0


def test_cors_only_for_the_allowed_origin(limited):
    good = httpx.get(limited.url + "/v1/models", headers={"Origin": GOOD_ORIGIN})
    assert good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    evil = httpx.get(limited.url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    preflight = httpx.options(limited.url + "/v1/chat/completions", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == GOOD_ORIGIN
