"""Plain ASGI middleware (no BaseHTTPMiddleware, so streaming and disconnects pass untouched).

APIKeyMiddleware: with `api_key` set, every request except GET /health (and /metrics when
`metrics_public`) needs `Authorization: Bearer <key>` or `x-api-key: <key>`, compared in constant
time; otherwise 401 in the error shape.
BodyLimitMiddleware: a request body over `max_bytes` gets 413, whether it declares its length or
streams it in chunks (reading stops at the limit); `per_path` sets another limit for a path
(/v1/files uploads: max_upload_bytes plus the multipart framing).
RequestMetricsMiddleware: counts responses by route template and status code, and stamps the
request's arrival (`first_token.ARRIVED`) for the time-to-first-token stages.
JSONBodyMiddleware: a request body is JSON whatever its Content-Type (`curl -d` sends
form-urlencoded, Ollama clients send none), except multipart uploads (/v1/files).
"""
from __future__ import annotations

import hmac
import time

from starlette.exceptions import HTTPException

from jackfield.server.errors import APIError, error_response
from jackfield.server.first_token import ARRIVED, TOKENIZING
from jackfield.server.metrics import ServerMetrics

EXEMPT_PATHS = ("/health",)


class APIKeyMiddleware:
    def __init__(self, app, api_key: str | None, exempt: tuple[str, ...] = EXEMPT_PATHS):
        self.app, self.api_key, self.exempt = app, api_key, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_key or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        if given is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        message = "missing API key" if given is None else "invalid API key"
        err = APIError(401, message + ": send it as 'Authorization: Bearer <key>' or 'x-api-key'", code="invalid_api_key")
        await error_response(err, scope["path"])(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body; an HTTPException, so FastAPI's body parsing passes it on to the
    error handler (errors.py) instead of turning it into a generic 400."""

    def __init__(self, limit: int, setting: str = "max_request_bytes"):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes ({setting})")


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, per_path: dict[str, tuple[int, str]] | None = None):
        self.app, self.max_bytes, self.per_path = app, max_bytes, per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, setting = self.per_path.get(scope["path"], (self.max_bytes, "max_request_bytes"))
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            err = APIError(413, BodyTooLarge(limit, setting).detail)
            return await error_response(err, scope["path"])(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, limited_receive, send)


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ARRIVED.set(time.monotonic())
        TOKENIZING.set(0.0)

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
