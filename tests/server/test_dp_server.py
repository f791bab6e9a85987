"""`jackfield serve --dp-size 2` end to end: two replicas of a tiny random Llama (CPU, one torch
thread per process; each replica at tp_size 2, so 4 scheduler-side processes) behind the cache-aware
router. Each prefix family's second request goes to the replica that served its first and shows the
hit in its cached tokens; a chat's next turn follows its output; a prompt that matches nothing goes
to the least loaded replica; a client that disconnects frees its request on its replica; /metrics
shows every choice; a dead replica brings the server down. Bad --dp-size values fail at startup
naming them, and the offline Engine refuses them."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from server_harness import SERVE, descendants, start_server, wait_gone

sys.path.insert(0, str(Path(__file__).parent.parent / "scheduler"))
from sched_harness import save_tiny_llama  # noqa: E402

FAMILY_A, FAMILY_B = list(range(10, 50)), list(range(60, 100))  # 40-token prefixes, no overlap
GREEDY = {"max_new_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    srv = start_server(tmp_path_factory.mktemp("dp-server"), "--model", model, "--device", "cpu", "--dp-size", "2",
                       "--tp-size", "2", "--kv-cache-bytes", str(16 << 20), "--max-running-requests", "8",
                       env={"OMP_NUM_THREADS": "1"})
    children = descendants(srv.proc.pid)
    yield srv
    try:
        if srv.proc.poll() is None:  # the last test kills a replica, which ends the server
            assert srv.stop() == 0, srv.output()[-3000:]
        assert not wait_gone(children), "replica processes survived the server"
    finally:
        srv.kill()


def metrics(srv) -> dict[str, float]:
    """Every series of /metrics: 'name{labels}' -> value."""
    text = httpx.get(srv.url + "/metrics", timeout=30).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(jackfield_\S+) (\S+)$", text, re.M)}


def routed(m: dict, replica: int, reason: str) -> float:
    return m[f'jackfield_dp_routed_requests_total{{reason="{reason}",replica="{replica}"}}']


def generate(srv, ids: list[int], **params) -> dict:
    resp = httpx.post(srv.url + "/generate", json={"input_ids": ids, "sampling_params": {**GREEDY, **params}},
                      timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_families_return_to_their_replica_and_new_prompts_go_to_the_least_loaded(server):
    start = metrics(server)
    assert routed(start, 0, "pinned") == routed(start, 1, "pinned") == 3  # the warm-up: 1 request, then 2
    assert "data parallel, 2 replicas" in server.output() and "replica 1: cpu, KV cache" in server.output()
    first_a, first_b = (generate(server, FAMILY_A + [1])["meta_info"], generate(server, FAMILY_B + [1])["meta_info"])
    assert first_a["cached_tokens"] == first_b["cached_tokens"] == 0
    second_a, second_b = (generate(server, FAMILY_A + [2, 3])["meta_info"],
                          generate(server, FAMILY_B + [2, 3])["meta_info"])
    assert second_a["cached_tokens"] == second_b["cached_tokens"] == 40  # each hit its family's replica
    m = metrics(server)
    for replica in (0, 1):
        assert routed(m, replica, "load_balance") == 1 and routed(m, replica, "cache_hit") == 1, m
        matched = f'jackfield_dp_routed_matched_tokens_total{{replica="{replica}"}}'
        assert m[matched] - start.get(matched, 0) == 40
        assert m[f'jackfield_dp_cache_hit_rate{{replica="{replica}"}}'] > 0
    # counted from `start`: the warm-up's second round (two requests) hit its first's prefix
    assert m["jackfield_cached_tokens_total"] - start.get("jackfield_cached_tokens_total", 0) == 80


def test_a_chats_next_turn_follows_its_output_to_the_replica_that_cached_it(server):
    turn = list(range(120, 130))
    reply = generate(server, turn, max_new_tokens=40, ignore_eos=True)["output_ids"]
    before = metrics(server)
    # the prompt is 10 of the next turn's 51 tokens, under the cache threshold; its output makes the hit
    nxt = generate(server, turn + reply + [7])["meta_info"]
    assert nxt["cached_tokens"] == 10 + 40 - 1  # the last output token's KV is never computed
    after = metrics(server)
    hits = [routed(after, r, "cache_hit") - routed(before, r, "cache_hit") for r in (0, 1)]
    assert sorted(hits) == [0, 1], (before, after)


def test_a_new_prompt_goes_to_the_least_loaded_and_a_disconnect_frees_its_replica(server):
    before = metrics(server)
    body = {"input_ids": [3, 1, 4, 1, 5], "stream": True,
            "sampling_params": {"max_new_tokens": 4000, "temperature": 0, "ignore_eos": True}}
    with httpx.Client(timeout=60) as client, client.stream("POST", server.url + "/generate", json=body) as resp:
        chunks = resp.iter_lines()
        assert json.loads(next(line for line in chunks if line.startswith("data:"))[5:])
        busy = metrics(server)
        held = [r for r in (0, 1) if busy[f'jackfield_dp_in_flight_reqs{{replica="{r}"}}'] == 1]
        assert len(held) == 1 and busy[f'jackfield_dp_num_running_reqs{{replica="{held[0]}"}}'] == 1, busy
        idle = 1 - held[0]
        assert generate(server, [2, 7, 1, 8])["meta_info"]["cached_tokens"] == 0
        after = metrics(server)
        assert routed(after, idle, "load_balance") == routed(before, idle, "load_balance") + 1
        assert routed(after, held[0], "load_balance") == routed(before, held[0], "load_balance") + 1
    deadline, m = time.monotonic() + 30, {}
    while time.monotonic() < deadline:  # the abort reaches the replica holding the request
        m = metrics(server)
        if (m[f'jackfield_dp_num_running_reqs{{replica="{held[0]}"}}'] == 0
                and m[f'jackfield_dp_in_flight_reqs{{replica="{held[0]}"}}'] == 0
                and m[f'jackfield_dp_kv_used_tokens{{replica="{held[0]}"}}'] == 0):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the disconnected request still holds replica {held[0]}: {m}")
    assert m["jackfield_num_running_reqs"] == 0


def test_a_dead_replica_brings_the_server_down_naming_it(server):
    pids = httpx.get(server.url + "/get_server_info", timeout=30).json()["process_ids"]
    assert set(pids) == {"server", "scheduler-0", "detokenizer-0", "scheduler-1", "detokenizer-1"}
    os.kill(pids["scheduler-1"], signal.SIGKILL)
    assert server.wait_exit(30) == 1
    assert f"the scheduler-1 process (pid {pids['scheduler-1']}) died" in server.output()


def test_bad_dp_sizes_fail_at_startup_naming_the_values(tmp_path):
    import subprocess

    zero = subprocess.run([*SERVE, "--dp-size", "0"], capture_output=True, text=True, timeout=120)
    assert zero.returncode != 0 and "dp_size" in zero.stderr and "'0'" in zero.stderr, zero.stderr
    srv = start_server(tmp_path, "--device", "cuda", "--dp-size", "3", "--no-warmup", wait=False,
                       env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        assert srv.wait_exit(120) == 1
        out = srv.output()
        assert "dp_size 3 x tp_size 1 needs 3 CUDA devices, but 2 are visible (0, 1)" in out, out
    finally:
        srv.kill()


def test_the_offline_engine_is_one_replica():
    from jackfield.engine import Engine

    with pytest.raises(ValueError, match=r"dp_size 2: data parallelism runs replicas behind `jackfield serve"):
        Engine(dp_size=2)
