"""A client that goes away aborts its request: the KV pool returns to its idle level."""
from __future__ import annotations

import time

import httpx
import pytest

LONG = {"ignore_eos": True, "temperature": 0.8}


def idle_kv(http, timeout: float = 20.0) -> dict:
    """Wait until nothing runs or waits, then return the scheduler's stats."""
    deadline = time.monotonic() + timeout
    while True:
        info = http.get("/get_server_info").json()
        if info["num_running"] == 0 and info["num_waiting"] == 0 and info["requests_in_flight"] == 0:
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"still busy after {timeout} s: {info}")
        time.sleep(0.2)


def test_stream_disconnect_frees_the_kv(http, server):
    before = idle_kv(http)["kv_used_tokens"]
    body = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 3000,
            "stream": True, **LONG}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            chunks = [next(lines) for _ in range(12)]
            assert any(c.startswith("data: ") for c in chunks)
            busy = http.get("/get_server_info").json()
            assert busy["num_running"] == 1 and busy["kv_used_tokens"] > before
    start = time.monotonic()
    assert idle_kv(http, timeout=10)["kv_used_tokens"] == before
    assert time.monotonic() - start < 10  # aborted, not run to 3000 tokens


def test_non_streamed_disconnect_frees_the_kv(http, server):
    before = idle_kv(http)["kv_used_tokens"]
    body = {"prompt": "Once upon a time", "max_tokens": 3000, **LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=1.5)
    assert idle_kv(http, timeout=10)["kv_used_tokens"] == before
