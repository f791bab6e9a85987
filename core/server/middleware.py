"""Plain ASGI middleware (no BaseHTTPMiddleware, so streaming and disconnects pass untouched).

APIKeyMiddleware: with `api_key` set, every request except GET /health needs
`Authorization: Bearer <key>` or `x-api-key: <key>`; otherwise 401 in the error shape.
RequestMetricsMiddleware: counts responses by route template and status code.
JSONBodyMiddleware: a request body is JSON whatever its Content-Type (`curl -d` sends
form-urlencoded, Ollama clients send none), except multipart uploads (/v1/files).
"""
from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from jackfield.server.errors import error_body
from jackfield.server.metrics import ServerMetrics

EXEMPT_PATHS = ("/health",)


class APIKeyMiddleware:
    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_key or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        if given is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        message = "missing API key" if given is None else "invalid API key"
        body = error_body(message + ": send it as 'Authorization: Bearer <key>' or 'x-api-key'",
                          "authentication_error", None, "invalid_api_key")
        await JSONResponse(body, status_code=401)(scope, receive, send)


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_counted(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                self.metrics.requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_counted)


BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class JSONBodyMiddleware:
    """Rewrites a non-JSON, non-multipart Content-Type of a request with a body to application/json,
    so FastAPI parses every route's body as JSON (malformed JSON is then a 400, as with the header)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"].encode() in BODY_METHODS:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            given = next((v for k, v in scope["headers"] if k.lower() == b"content-type"), b"").lower()
            if not (given.startswith(b"multipart/") or b"json" in given.split(b";")[0]):
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
