"""The real app in-process with a stub engine, and every route it serves (enumerated from the app,
plugin routes included): for tests that hold for every route, so a new route is covered without
editing them (test_security: the API key; test_fuzz_api: the OpenAPI contract)."""
from __future__ import annotations

import re
from types import SimpleNamespace

from fastapi.testclient import TestClient

from jackfield.config import settings_for
from jackfield.io_struct import FlushCacheOut
from jackfield.plugins import load_plugins
from jackfield.server.app import ServerState, build_app
from jackfield.server.metrics import ServerMetrics


class StubEngine:
    """The tokenizer manager's surface, answering without an engine."""

    tokenizer = None
    num_in_flight = 0

    async def flush_cache(self):
        return FlushCacheOut(True)

    def __getattr__(self, name):
        raise RuntimeError(f"no engine in this test ({name})")


def make_client(client=("testclient", 50000), **settings) -> TestClient:
    pm, records = load_plugins()
    info = SimpleNamespace(model_path="/models/stub", context_len=64, components={})
    state = ServerState(settings_for(**settings), info, StubEngine(), ServerMetrics(), pm, records)
    state.ready = True
    return TestClient(build_app(state), raise_server_exceptions=False, client=client)


def flat_routes(routes, prefix: str = ""):
    """(prefix, route) of every route, looking into included routers (FastAPI keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes, prefix + route.include_context.prefix)
        else:
            yield prefix, route


def every_route(app, fill: str | None = "x") -> list[tuple[str, str]]:
    """(method, path) of every route the app serves but HEAD; path parameters filled with `fill`
    (None: left as the `{name}` templates OpenAPI uses, without Starlette's `:path` convertors)."""
    out = []
    for prefix, route in flat_routes(app.routes):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                out.append((method, path if fill is None else re.sub(r"\{[^}]+\}", fill, path)))
    return out
