"""Process lifecycle: API key, SIGTERM with no orphans, a model that cannot load (dying children:
test_fail_fast.py)."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx
import pytest
from server_harness import SERVE, SMALL, assert_error, descendants, start_server, wait_gone


# SIGTERM drains in-flight requests for up to --shutdown-timeout (default 30 s) before aborting them:
# the stream of 2000 tokens below outlasts any drain, so a short one ends the test sooner along the same
# path (the stream aborted with an error, the server exiting 0). test_drain.py tests the drain itself.
SHUTDOWN_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed")
    srv = start_server(folder, *SMALL, "--api-key", "sekret", "--file-storage-dir", str(folder / "files"),
                       "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S))
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


def test_a_batch_runs_behind_the_api_key(keyed_server, tmp_path):
    """The Batch API's in-process requests pass the API key check like the client's own."""
    from openai import OpenAI

    client = OpenAI(base_url=keyed_server.url + "/v1", api_key="sekret", max_retries=0)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "Hi", "max_tokens": 2, "temperature": 0}}
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    file = client.files.create(file=open(tmp_path / "in.jsonl", "rb"), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 1, batch


def test_sigterm_with_a_stream_in_flight_stops_every_process_quietly(keyed_server):
    children = descendants(keyed_server.proc.pid)
    assert len(children) >= 2  # scheduler and detokenizer (and multiprocessing's resource tracker)
    body = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", keyed_server.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer sekret"}) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the stream has started
        keyed_server.proc.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]" or any("error" in line for line in rest)
    assert keyed_server.wait_exit() == 0, keyed_server.output()[-3000:]
    assert not wait_gone(children), "child processes survived SIGTERM"
    assert "Traceback" not in keyed_server.output(), keyed_server.output()[-3000:]


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


def test_a_busy_port_is_reported_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log = tmp_path / "busy.log"
        with open(log, "wb") as out:
            proc = subprocess.run([*SERVE, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, timeout=60)
    text = log.read_text()
    assert proc.returncode == 1, text
    assert f"127.0.0.1:{port}" in text and "already in use" in text and f"--port {port + 1}" in text
    assert "loading the model" not in text and "Traceback" not in text
