"""Security on the real app, in-process with a stub engine: the API key guards every route but
/health (routes enumerated from the app, plugin routes included), /metrics optionally open, CORS off
by default, admin routes local-only without a key, /health unhealthy on failure and while draining;
and `confined_path`, the helper every route that takes a file path must use."""
from __future__ import annotations

import os

import pytest
from app_harness import every_route, make_client
from fastapi import FastAPI
from fastapi.testclient import TestClient
from server_harness import assert_error

from jackfield.config import Settings
from jackfield.server.errors import install_error_handlers
from jackfield.server.file_paths import confined_path

KEY = "s3cret-key"


def test_every_route_but_health_needs_the_key():
    client = make_client(api_key=KEY)
    routes = every_route(client.app)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/openapi.json") in routes
    for method, path in routes:
        if path == "/health":
            assert client.request(method, path).status_code == 200
            continue
        assert_error(client.request(method, path), 401, code="invalid_api_key")
        assert_error(client.request(method, path, headers={"Authorization": "Bearer " + KEY[:-1]}), 401)
        assert client.request(method, path, headers={"Authorization": "Bearer " + KEY}).status_code != 401, path
        assert client.request(method, path, headers={"x-api-key": KEY}).status_code != 401, path


def test_metrics_can_be_public():
    assert make_client(api_key=KEY).get("/metrics").status_code == 401
    public = make_client(api_key=KEY, metrics_public=True)
    assert public.get("/metrics").status_code == 200
    assert public.get("/v1/models").status_code == 401


def test_cors_is_off_by_default():
    client = make_client()
    assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "http://a.example"}).headers
    preflight = client.options("/v1/chat/completions", headers={"Origin": "http://a.example",
                                                                "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_the_default_bind_address_is_loopback():
    assert Settings.model_fields["host"].default == "127.0.0.1"


def test_admin_routes_answer_only_local_clients_without_a_key():
    assert_error(make_client().post("/flush_cache"), 403, code="admin_only")
    assert make_client(client=("127.0.0.1", 50000)).post("/flush_cache").json()["ok"] is True
    keyed = make_client(api_key=KEY)  # with a key the key decides, wherever the client is
    assert keyed.post("/flush_cache", headers={"x-api-key": KEY}).json()["ok"] is True


def test_health_reports_failure_and_drain():
    client = make_client()
    state = client.app.state.server
    assert client.get("/health").status_code == 200
    state.draining = True
    resp = client.get("/health")
    assert_error(resp, 503, code="shutting_down")
    assert resp.headers["retry-after"].isdigit()
    assert_error(client.get("/v1/models"), 503, code="shutting_down")
    state.draining, state.failure = False, "the scheduler process (pid 1) died"
    assert "the scheduler process (pid 1) died" in assert_error(client.get("/health"), 503)["message"]


# ---- confined_path ------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    """root/ with a file, a subdirectory, a symlink inside and one leading out; a FIFO outside (opening
    it would block, so a test that passes proves nothing outside was opened)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "adapters" / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "adapters" / "a" / "adapter_config.json").write_text("{}")
    os.mkfifo(outside / "secret")
    (root / "inside-link").symlink_to(root / "adapters" / "a")
    (root / "escape").symlink_to(outside)
    (root / "secret-link").symlink_to(outside / "secret")
    return root, outside


def test_paths_below_the_root_resolve(tree):
    root, _ = tree
    assert confined_path(str(root), "adapters/a") == (root / "adapters" / "a").resolve()
    assert confined_path(str(root), "adapters/../adapters/a/adapter_config.json").is_file()
    assert confined_path(str(root), "inside-link") == (root / "adapters" / "a").resolve()


@pytest.mark.parametrize("path", ["../outside/secret", "adapters/../../outside", "escape/secret", "secret-link",
                                  "escape", "/etc/passwd", "../../../../etc/passwd", "//etc/passwd"])
def test_paths_leaving_the_root_are_403(tree, path):
    root, _ = tree
    with pytest.raises(Exception) as info:
        confined_path(str(root), path)
    assert info.value.status == 403 and info.value.code == "file_access_denied"


@pytest.mark.parametrize("path", ["", "a\x00b", None, 7])
def test_non_paths_are_400(tree, path):
    with pytest.raises(Exception) as info:
        confined_path(str(tree[0]), path)
    assert info.value.status == 400


def test_no_root_refuses_every_path(tree):
    with pytest.raises(Exception) as info:
        confined_path(None, "adapters/a")
    assert info.value.status == 403


def test_a_route_reading_files_reads_nothing_outside(tree):
    """What an adapter-loading route does: confine, then read."""
    root, _ = tree
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/read")
    def read(path: str):
        return {"bytes": len(confined_path(str(root), path).read_bytes())}

    client = TestClient(app)
    assert client.get("/read", params={"path": "inside-link/adapter_config.json"}).json() == {"bytes": 2}
    for bad in ("../outside/secret", "secret-link", "escape/secret", str(tree[1] / "secret")):
        assert_error(client.get("/read", params={"path": bad}), 403, code="file_access_denied")
