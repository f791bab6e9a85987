"""Error handlers and API-key middleware on a bare app (no model): the shape holds even for a crash."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from server_harness import assert_error

from jackfield.server.errors import APIError, install_error_handlers
from jackfield.server.middleware import APIKeyMiddleware
from jackfield.server.protocol import ChatCompletionRequest


def make_app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals at /etc/passwd")

    @app.get("/teapot")
    async def teapot():
        raise APIError(400, "no tea", param="tea", code="no_tea")

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest):
        return {"ok": True}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    app.add_middleware(APIKeyMiddleware, api_key="k")
    return TestClient(app, raise_server_exceptions=False, headers={"x-api-key": "k"})


def test_unexpected_exception_is_a_500_without_details():
    err = assert_error(make_app().get("/boom"), 500)
    assert err["type"] == "internal_error" and "RuntimeError" in err["message"]
    assert "passwd" not in err["message"]


def test_api_error_fields_pass_through():
    assert_error(make_app().get("/teapot"), 400, param="tea", code="no_tea")


def test_validation_errors_name_the_field():
    client = make_app()
    assert_error(client.post("/chat", json={"messages": [{"content": "hi"}]}), 400, param="messages.0.role")
    assert_error(client.post("/chat", content=b"{nope", headers={"content-type": "application/json"}), 400)


def test_api_key_header_forms():
    client = make_app()
    assert client.get("/health", headers={"x-api-key": ""}).status_code == 200
    assert_error(client.get("/teapot", headers={"x-api-key": "bad"}), 401, code="invalid_api_key")
    assert client.get("/teapot", headers={"x-api-key": "", "authorization": "Bearer k"}).status_code == 400
