"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`, for every API
but Anthropic's: below /v1/messages they take Anthropic's shape,
`{"type": "error", "error": {"type", "message"}}`, so each client's SDK reads its own errors.

`APIError` is raised by the handlers; the exception handlers installed here turn it, request
validation failures, malformed JSON, unknown routes and any unexpected exception into that shape
(`error_response(err, path)`; the middlewares use it too). A 500 carries the exception's type,
never a traceback (the traceback goes to the server log).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jackfield.sampling.params import SamplingParamError
from jackfield.server.tokenizer_manager import ServerUnavailable

log = logging.getLogger(__name__)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large",
                   422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error",
                   500: "api_error", 503: "overloaded_error"}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 409: "conflict_error",
         413: "invalid_request_error",
         422: "invalid_request_error", 499: "client_closed_request", 500: "internal_error",
         503: "service_unavailable"}


class APIError(Exception):
    """An HTTP error to send as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def payload(self, path: str) -> dict:
        """The body in the shape of the API that `path` belongs to (Anthropic's has no `param`: the
        message starts with it instead, as its validation errors do)."""
        if not is_anthropic(path):
            return self.body()
        named = self.param is None or self.message.startswith(self.param)
        return anthropic_error_body(self.status, self.message if named else f"{self.param}: {self.message}")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error_body(status: int, message: str) -> dict:
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_response(err: APIError, path: str = "") -> JSONResponse:
    return JSONResponse(err.payload(path), status_code=err.status, headers=err.headers)


def from_sampling_error(exc: SamplingParamError, rename: dict[str, str] | None = None) -> APIError:
    """A SamplingParamError as a 400 whose `param` uses the API's own name for the parameter."""
    param = (rename or {}).get(exc.param, exc.param)
    message = str(exc)
    if param != exc.param:
        message = message.replace(exc.param, param)
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ServerUnavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc, request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0] if exc.errors() else {}
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return error_response(APIError(400, f"malformed JSON body: {detail}".rstrip(": ")), request.url.path)
    raw = [part for part in err.get("loc", ()) if part != "body"]
    union = next((i for i, part in enumerate(raw) if _union_member(part)), None)
    param = ".".join(str(part) for part in raw[:union]) or None
    if err.get("type") == "missing" and param and union is None:
        message = f"missing required parameter: '{param}'"
    elif err.get("type") == "extra_forbidden" and param and union is None:
        message = f"unsupported parameter: '{param}' is not implemented by this server"
    elif union is not None:
        inner = ".".join(str(part) for part in raw[union:])
        message = f"{param}: matches none of the accepted forms (as {inner}: {err.get('msg', 'invalid')})"
    else:
        message = f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", "invalid request body")
    return error_response(APIError(400, message, param=param), request.url.path)


def _union_member(part) -> bool:
    """pydantic names the member of a union it tried (`str`, `list[str]`, `TextPart`) in an error's
    location; the parameter is the path without those."""
    return isinstance(part, str) and ("[" in part or "-" in part or part[:1].isupper() or part in {"str", "int", "float", "bool"})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"unknown route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(APIError(405, message, headers={"Allow": _allowed(request)}), request.url.path)
    return error_response(APIError(exc.status_code, message, headers=exc.headers), request.url.path)


def _allowed(request: Request) -> str:
    """Every method some route serves on this path (Starlette names only the first route's)."""
    path, methods = request.url.path, set()

    def visit(routes, prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # an included router, kept nested
            if inner is not None:
                visit(inner.routes, prefix + route.include_context.prefix)
            elif path.startswith(prefix) and getattr(route, "path_regex", None) is not None \
                    and route.path_regex.match(path[len(prefix):]):
                methods.update(getattr(route, "methods", None) or ())

    visit(request.app.router.routes, "")
    return ", ".join(sorted(methods))


async def _unavailable(request: Request, exc: ServerUnavailable) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(APIError(503, str(exc), code=exc.code, headers=headers), request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    from jackfield.plugin_faults import blame

    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    server = getattr(request.app.state, "server", None)
    plugin = blame(exc, getattr(server, "pm", None))
    where = f" in plugin '{plugin}'" if plugin else ""
    return error_response(APIError(500, f"internal server error{where} ({type(exc).__name__})"), request.url.path)
