"""Fail fast: kill -9 of either engine process is noticed within 2 s; the requests in flight end
with a 503 error, the log names the child and the signal, the server exits 1 and leaves no child."""
from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from server_harness import SMALL, descendants, start_server, wait_gone

DETECTION_LIMIT_S = 2.0
LONG = {"text": "Count forever:", "stream": True, "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}


@pytest.mark.parametrize("child", ["scheduler", "detokenizer"])
def test_kill_9_of_a_child_fails_fast(tmp_path, child):
    srv = start_server(tmp_path, *SMALL, "--no-warmup")
    try:
        children = descendants(srv.proc.pid)
        pid = httpx.get(srv.url + "/get_server_info").json()["process_ids"][child]
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            with client.stream("POST", "/generate", json=LONG) as resp:
                lines = resp.iter_lines()
                next(lines)
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                errors = [json.loads(line[6:]) for line in lines if line.startswith("data: {") and '"error"' in line]
                noticed = time.monotonic() - killed
        assert errors and errors[0]["error"]["type"] == "service_unavailable", errors
        assert f"the {child} process (pid {pid}) died" in errors[0]["error"]["message"]
        assert noticed < DETECTION_LIMIT_S, f"the dead {child} was noticed after {noticed:.2f} s"
        assert srv.wait_exit(timeout=30) == 1
        log = srv.output()
        assert f"the {child} process (pid {pid}) died (exit code -9, killed by SIGKILL)" in log
        assert not wait_gone(children), "child processes survived"
    finally:
        srv.kill()
