"""One shared SmolLM2 server for the API tests, started by tests/server/server_harness.py."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_harness import SMALL, UPLOAD_LIMIT, Server, descendants, start_server, wait_gone  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    files = tmp_path_factory.mktemp("files")
    srv = start_server(tmp_path_factory.mktemp("server"), *SMALL, "--file-storage-dir", str(files),
                       "--max-upload-bytes", str(UPLOAD_LIMIT))
    children = descendants(srv.proc.pid)
    yield srv
    try:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.output()[-3000:]}"
        assert not wait_gone(children), "child processes survived the server"
    finally:
        srv.kill()


@pytest.fixture(scope="session")
def model_name(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def anthropic_client(server):
    from anthropic import Anthropic

    return Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
