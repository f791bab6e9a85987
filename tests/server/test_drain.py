"""Graceful drain: on SIGTERM the server refuses new requests (503 + Retry-After), finishes the ones
in flight within --shutdown-timeout, aborts the rest with an error they are told about, and exits 0
with no child left."""
from __future__ import annotations

import json
import signal
import threading

import httpx
from server_harness import SMALL, assert_error, descendants, start_server, wait_gone

# The long request runs into the deadline, so the drain lasts the whole timeout: 5 s is still many
# times what the two 8-token requests need to finish (well under a second).
SHUTDOWN_TIMEOUT_S = 5


def stream(url: str, max_new: int, started: threading.Event, events: list) -> None:
    body = {"text": "Once upon a time", "stream": True,
            "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True}}
    with httpx.stream("POST", url + "/generate", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                started.set()
    started.set()


def test_sigterm_drains_in_flight_requests(tmp_path):
    srv = start_server(tmp_path, *SMALL, "--no-warmup", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S),
                       env={"OMP_NUM_THREADS": "1"})
    try:
        children = descendants(srv.proc.pid)
        runs = {"short0": 8, "short1": 8, "long": 5000}
        events = {name: [] for name in runs}
        started = {name: threading.Event() for name in runs}
        threads = [threading.Thread(target=stream, args=(srv.url, n, started[k], events[k])) for k, n in runs.items()]
        for t in threads:
            t.start()
        for ev in started.values():
            assert ev.wait(60)
        srv.proc.send_signal(signal.SIGTERM)
        refused = None
        for _ in range(100):  # until the drain has begun
            refused = httpx.get(srv.url + "/v1/models", timeout=10)
            if refused.status_code == 503:
                break
        assert_error(refused, 503, code="shutting_down")
        assert refused.headers["retry-after"].isdigit()
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
        for t in threads:
            t.join(60)
        for name in ("short0", "short1"):
            last = events[name][-1]
            assert last.get("meta_info", {}).get("finish_reason", {}).get("type") == "length", events[name][-2:]
            assert len(last["output_ids"]) == 8
        err = events["long"][-1]["error"]
        assert err["type"] == "service_unavailable" and "shut down before this request finished" in err["message"]
        assert srv.wait_exit(timeout=SHUTDOWN_TIMEOUT_S + 20) == 0, srv.output()[-3000:]
        assert "2 of 3 request(s) completed, 1 aborted" in srv.output()
        assert not wait_gone(children), "child processes survived the drain"
    finally:
        srv.kill()
