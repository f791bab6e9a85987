"""API fuzzing: schemathesis, driven by /openapi.json, against `jackfield serve` on the embedded
model; every route, every check, a bounded budget. No 5xx, every 4xx in the error shape the route
documents (OpenAI's; Anthropic's below /v1/messages), every response as the schema says, every
schema-valid body accepted. benchmarks/fuzz_api.sh runs the same with a long budget."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from app_harness import every_route, make_client
from server_harness import start_server

pytest.importorskip("schemathesis")
sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

from run import fuzz  # noqa: E402

# FastAPI's own pages: the document itself and its viewers
DOC_ROUTES = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
# A 3 s request timeout bounds the generations the fuzzer asks for (408 is an accepted answer).
FUZZ_SERVER = ["--kv-cache-bytes", "268435456", "--no-warmup", "--context-length", "2048", "--request-timeout", "3"]


def test_fuzz_every_route(tmp_path):
    srv = start_server(tmp_path, *FUZZ_SERVER, env={"OMP_NUM_THREADS": "1"})
    try:
        summary = fuzz(srv.url, str(tmp_path / "report.json"), max_examples=3, max_time=40, request_timeout=60)
    finally:
        srv.kill()
    print({k: summary.get(k) for k in ("seconds", "operations", "test_cases", "failures", "server_errors")})
    assert summary["exit_code"] == 0 and not summary["failures"] and not summary["errors"], summary["output_tail"]
    assert summary["operations"]["tested"] == summary["operations"]["total"], summary["operations"]


def test_every_route_is_in_the_contract():
    """The fuzzer takes its operations from /openapi.json: every route the app serves (plugin routes
    included) is there, so a new route is fuzzed without editing this file."""
    client = make_client()
    schema = client.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    routes = set(every_route(client.app, fill=None)) - DOC_ROUTES
    assert ("POST", "/v1/chat/completions") in routes
    assert routes - operations == set(), "routes missing from /openapi.json (include_in_schema=False?)"
