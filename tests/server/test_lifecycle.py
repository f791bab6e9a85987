"""Process lifecycle: API key, SIGTERM with no orphans, a dying subprocess, a model that cannot load."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from server_harness import SMALL, assert_error, descendants, start_server, wait_gone


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("keyed"), *SMALL, "--api-key", "sekret")
    yield srv
    srv.kill()


def test_api_key_is_required_except_for_health(keyed_server):
    url = keyed_server.url
    assert httpx.get(url + "/health").status_code == 200
    assert_error(httpx.get(url + "/v1/models"), 401)
    assert_error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.post(url + "/v1/messages", json={}, headers={"x-api-key": "wrong"}), 401)
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert httpx.get(url + "/get_model_info", headers={"x-api-key": "sekret"}).status_code == 200


def test_sigterm_stops_every_process(keyed_server):
    children = descendants(keyed_server.proc.pid)
    assert len(children) >= 2  # scheduler and detokenizer (and multiprocessing's resource tracker)
    assert keyed_server.stop(signal.SIGTERM) == 0, keyed_server.output()[-3000:]
    assert not wait_gone(children), "child processes survived SIGTERM"


def test_dead_subprocess_makes_the_server_exit_nonzero(tmp_path):
    srv = start_server(tmp_path, *SMALL, "--no-warmup")
    try:
        children = descendants(srv.proc.pid)
        pids = httpx.get(srv.url + "/get_server_info").json()["process_ids"]
        body = {"text": "Count forever:", "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            with client.stream("POST", "/generate", json={**body, "stream": True}) as resp:
                lines = resp.iter_lines()
                next(lines)
                os.kill(pids["scheduler"], signal.SIGKILL)
                rest = list(lines)  # the stream ends (with an error event) instead of hanging
        assert any('"error"' in line for line in rest)
        start = time.monotonic()
        assert srv.wait_exit(timeout=30) == 1
        assert time.monotonic() - start < 30
        assert "scheduler process died" in srv.output()
        assert not wait_gone(children), "child processes survived"
    finally:
        srv.kill()


def test_killed_server_leaves_no_orphans(tmp_path):
    srv = start_server(tmp_path, *SMALL, "--no-warmup")
    try:
        children = descendants(srv.proc.pid)
        srv.proc.kill()  # SIGKILL: no cleanup runs in the server; the children notice on their own
        srv.proc.wait(10)
        assert not wait_gone(children, timeout=10), "children outlived a SIGKILLed server"
    finally:
        srv.kill()


def test_model_that_cannot_load_exits_nonzero_with_the_reason(tmp_path):
    srv = start_server(tmp_path, "--model", str(tmp_path / "missing-model"), wait=False)
    try:
        assert srv.wait_exit(timeout=90) == 1
        assert "missing-model" in srv.output() and "does not exist" in srv.output()
    finally:
        srv.kill()
