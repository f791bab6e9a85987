"""A plugin's faults are contained: a forward that raises for one request fails that request (500,
naming the plugin) while the others finish; a grammar compiler that raises fails that request (400,
naming the backend); a route that raises is a 500 naming the plugin; a plugin that raises at
startup is named in the error; a forward that hangs trips the watchdog.

The plugin is tests/fixtures/jackfield-crashing-plugin, made importable (module + .dist-info with its
entry points) in a temporary directory put on the server's PYTHONPATH."""
from __future__ import annotations

import json
import shutil
import threading
import tomllib
from pathlib import Path

import httpx
import pytest
from server_harness import SMALL, assert_error, descendants, start_server, wait_gone

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "jackfield-crashing-plugin"
RAISE_IDS = [31999, 31998, 31997]
HANG_IDS = [31996, 31995, 31994]
WATCHDOG_S = 10
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # no spin-waiting torch threads: steady step times on a busy machine


def install_crashing_plugin(target: Path) -> dict[str, str]:
    """The fixture as an installed distribution below `target`; returns the env that sees it."""
    meta = tomllib.loads((FIXTURE / "pyproject.toml").read_text())["project"]
    shutil.copy(FIXTURE / "jackfield_crashing_plugin.py", target)
    info = target / f"jackfield_crashing_plugin-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    points = "".join(f"{k} = {v}\n" for k, v in meta["entry-points"]["jackfield"].items())
    (info / "entry_points.txt").write_text(f"[jackfield]\n{points}")
    return {"PYTHONPATH": str(target)}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    return {**install_crashing_plugin(tmp_path_factory.mktemp("crashing-site")), **ONE_THREAD}


@pytest.fixture(scope="module")
def crashing_server(tmp_path_factory, plugin_env):
    srv = start_server(tmp_path_factory.mktemp("crashing"), *SMALL, "--attention-backend", "crashing_attn",
                       "--watchdog-timeout", str(WATCHDOG_S), env=plugin_env)
    yield srv
    srv.kill()


def generate(url: str, ids: list[int], max_new: int, results: dict, key: str) -> None:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True}}
    results[key] = httpx.post(url + "/generate", json=body, timeout=120)


def test_a_request_that_makes_the_forward_raise_fails_alone(crashing_server):
    results: dict = {}
    good = [threading.Thread(target=generate, args=(crashing_server.url, [504 + i, 3575, 28], 24, results, f"g{i}"))
            for i in range(3)]
    for t in good:
        t.start()
    generate(crashing_server.url, [504, *RAISE_IDS, 28], 8, results, "bad")
    for t in good:
        t.join()
    err = assert_error(results["bad"], 500)
    assert "plugin 'crashing' failed" in err["message"] and "poisoned batch" in err["message"], err
    for i in range(3):
        out = results[f"g{i}"].json()
        assert out["meta_info"]["finish_reason"]["type"] == "length" and len(out["output_ids"]) == 24, out


def test_a_grammar_compiler_that_raises_fails_that_request_alone(crashing_server):
    url = crashing_server.url
    results: dict = {}
    good = threading.Thread(target=generate, args=(url, [504, 3575, 28], 16, results, "good"))
    good.start()
    crash = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "regex": "CRASH",
                                                      "grammar_backend": "crashing_grammar"}, timeout=60)
    good.join()
    err = assert_error(crash, 400)
    assert "crashing_grammar" in err["message"] and "KeyError" in err["message"], err
    assert results["good"].json()["meta_info"]["finish_reason"]["type"] == "length"
    ok = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "regex": "[0-9]+",
                                                   "grammar_backend": "crashing_grammar"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"].isdigit(), ok.text


def test_a_route_that_raises_names_its_plugin(crashing_server):
    err = assert_error(httpx.get(crashing_server.url + "/crashing/boom"), 500)
    assert "plugin 'crashing'" in err["message"] and "RuntimeError" in err["message"]
    assert httpx.get(crashing_server.url + "/health").status_code == 200


def test_a_plugin_that_raises_at_startup_is_named(tmp_path, plugin_env):
    srv = start_server(tmp_path, *SMALL, "--attention-backend", "crashing_attn", wait=False,
                       env={**plugin_env, "CRASHING_PLUGIN_FAIL_AT_START": "1"})
    try:
        assert srv.wait_exit(timeout=120) == 1
        assert "plugin 'crashing' failed: RuntimeError: crashing_attn refuses to start" in srv.output()
    finally:
        srv.kill()


def test_a_hanging_forward_trips_the_watchdog(crashing_server):
    """Last in the module: the server exits."""
    children = descendants(crashing_server.proc.pid)
    body = {"input_ids": [504, *HANG_IDS], "stream": True, "sampling_params": {"max_new_tokens": 4}}
    with httpx.stream("POST", crashing_server.url + "/generate", json=body, timeout=60) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert events[-1]["error"]["type"] == "service_unavailable" and "stuck" in events[-1]["error"]["message"]
    assert crashing_server.wait_exit(timeout=30) == 1
    log = crashing_server.output()
    assert f"watchdog_timeout {WATCHDOG_S} s" in log
    assert "jackfield_crashing_plugin.py" in log and "init_forward_metadata" in log  # the stack dump
    assert not wait_gone(children), "child processes survived"
