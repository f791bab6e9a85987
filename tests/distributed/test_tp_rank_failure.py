"""A rank that dies while an engine runs at TP 2 (CPU, gloo): the ranks cannot retry a forward
together, so the failed forward stops the engine. The offline Engine fails that request and every
later one with the error (never a hang); `jackfield serve` exits 1 naming it, with no process left."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from jackfield.engine import Engine
from tp_harness import ENGINE, PROMPT, save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_harness import descendants, start_server, wait_gone  # noqa: E402

GREEDY = {"max_new_tokens": 2, "temperature": 0}
STOPS = "the ranks cannot go on; the engine stops"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama_tp")
    save_model(directory)
    return directory


def test_offline_engine_fails_every_request_after_a_rank_died(model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with Engine(str(model), tp_size=2, **ENGINE) as engine:
        assert len(engine.generate(PROMPT, GREEDY)["token_ids"]) == 2
        follower = engine.loop.scheduler.runner.followers.procs[0]
        follower.kill()
        follower.join(10)
        for _ in range(2):  # the failed forward, then a request after it
            with pytest.raises(RuntimeError, match=f"internal error: .*tp_size 2: {STOPS}"):
                engine.generate(PROMPT, GREEDY)


def test_server_exits_when_a_rank_died(model, tmp_path):
    srv = start_server(tmp_path, "--model", str(model), "--device", "cpu", "--dtype", "float32", "--tp-size", "2",
                       "--kv-cache-bytes", str(1 << 20), "--max-running-requests", "4", "--no-warmup",
                       env={"OMP_NUM_THREADS": "1"})
    try:
        children = descendants(srv.proc.pid)
        ranks = [pid for pid in children if _parent(pid) != srv.proc.pid]  # the scheduler's child: rank 1
        assert len(ranks) == 1, children
        os.kill(ranks[0], signal.SIGKILL)
        try:
            resp = httpx.post(srv.url + "/generate", json={"input_ids": PROMPT, "sampling_params": GREEDY}, timeout=60)
            assert resp.status_code == 500 and STOPS in resp.text, resp.text  # unless the server went first
        except httpx.TransportError:
            pass
        assert srv.wait_exit(60) == 1, srv.output()[-3000:]
        assert STOPS in srv.output() and "the scheduler process" in srv.output(), srv.output()[-3000:]
        assert not wait_gone(children), "processes survived the server"
    finally:
        srv.kill()


def _parent(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[1])
