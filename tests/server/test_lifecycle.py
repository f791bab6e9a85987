"""Process lifecycle: API key, SIGTERM with no orphans, a model that cannot load (dying children:
test_fail_fast.py)."""
from __future__ import annotations

import signal

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
