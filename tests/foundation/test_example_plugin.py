"""The example third-party plugin (examples/plugins/jackfield-example-plugin) end to end, as a user
runs it: pip-installed into a directory of its own (tests/fixtures/install.sh), discovered,
selected by its own config file, and serving a generation through `jackfield serve`.
(tests/foundation/test_kit.py certifies it with `jackfield plugin check`.)"""
from __future__ import annotations

import sys
from pathlib import Path

import httpx

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "jackfield-example-plugin"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_harness import descendants, start_server, wait_gone  # noqa: E402

SMALL = ["--kv-cache-bytes", str(32 << 20), "--max-running-requests", "4", "--no-warmup"]


def test_serve_selects_the_example_backend_from_its_config_file(plugin_site, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(plugin_site))
    monkeypatch.setenv("JACKFIELD_DISABLE_PLUGINS", "dup")  # the fixture that re-registers example_sdpa
    server = start_server(tmp_path, "--config", str(EXAMPLE / "jackfield.toml"), *SMALL)
    children = descendants(server.proc.pid)
    try:
        in_use = httpx.get(server.url + "/v1/plugins", timeout=30).json()["in_use"]
        assert in_use["attention"]["name"] == "example_sdpa" and in_use["attention"]["plugin"] == "example"
        model = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        done = httpx.post(server.url + "/v1/completions", timeout=120, json={
            "model": model, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] == 8
        assert server.stop() == 0
        assert not wait_gone(children)
    finally:
        server.kill()
    assert "attention     example_sdpa     selected by configuration" in server.output()
