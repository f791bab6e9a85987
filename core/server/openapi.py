"""The OpenAPI contract: /openapi.json and /docs say exactly what each route accepts and answers.

FastAPI derives request bodies and parameters from the pydantic models that validate them
(protocol.py); `install_openapi` then finishes the document:

* validation errors are 400 here, never FastAPI's 422, so 422 and its schemas are dropped;
* every operation lists the errors it can answer, in the shape the client gets (`ErrorResponse`,
  or `AnthropicErrorResponse` below /v1/messages): 400 (bad body or parameters), 401 (API key),
  404 (unknown model, where the body names one), 408 (its `timeout`), 413 (body size), 503
  (starting, draining, queue full, engine down); routes add their own (admin routes: 403);
* bodies a handler reads itself (`json_body`, any content type) are documented with `json_body_doc`;
* 200 responses get the models of responses.py, streamed content types included (SSE, NDJSON);
* token ids are bounded by the served model's vocabulary (`x-token-id` fields).
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

from jackfield.server import responses as r
from jackfield.server.errors import is_anthropic

REF = "#/components/schemas/{model}"
ERROR_TEXT = {400: "Invalid request: a malformed or mistyped body, a value out of range, a prompt that does not fit",
              401: "Missing or wrong API key (with --api-key)",
              403: "Refused: an admin route from a remote client without --api-key, or a file path outside --file-root",
              404: "Unknown model, file, batch or list cursor (`after`)",
              409: "Conflicts with the server's state (e.g. requests are running)",
              408: "The request's timeout ran out",
              413: "The body is larger than --max-request-bytes",
              503: "Starting, shutting down, at capacity (Retry-After) or the engine is down"}
SSE = {"text/event-stream": {"schema": {"description": "with stream: true, server-sent events of the JSON objects "
                                                        "docs/server.md describes, then `data: [DONE]`"}}}
NDJSON = {"application/x-ndjson": {"schema": {"description": "with stream: true (Ollama's default), one JSON object "
                                                            "per line, the last with done: true"}}}
# (path, method) -> (model of the JSON body, streamed content types)
RESPONSES: dict[tuple[str, str], tuple[Any, dict]] = {
    ("/v1/chat/completions", "post"): (r.ChatCompletion, SSE),
    ("/v1/completions", "post"): (r.Completion, SSE),
    ("/v1/models", "get"): (r.ModelList, {}),
    ("/v1/messages", "post"): (r.Message, SSE),
    ("/api/generate", "post"): (r.OllamaGenerateResponse, NDJSON),
    ("/api/chat", "post"): (r.OllamaChatResponse, NDJSON),
    ("/api/tags", "get"): (r.OllamaTags, {}),
    ("/api/version", "get"): (r.OllamaVersion, {}),
    ("/generate", "post"): (r.NativeGenerateResponse, SSE),
    ("/health", "get"): (r.Health, {}),
    ("/health_generate", "get"): (r.HealthGenerate, {}),
    ("/get_model_info", "get"): (r.ModelInfo, {}),
    ("/get_server_info", "get"): (r.ServerInfo, {}),
    ("/flush_cache", "post"): (r.FlushCache, {}),
    ("/v1/plugins", "get"): (r.PluginsInfo, {}),
}
TEXT_RESPONSES = {("/metrics", "get"): "text/plain"}


def json_body_doc(model: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads `model` itself (protocol.json_body)."""
    schema = model.model_json_schema(ref_template=REF)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def error_responses(*statuses: int) -> dict:
    """`responses=` for a route's own error statuses (documented in the shape its API uses)."""
    return {s: {"description": ERROR_TEXT[s]} for s in statuses}


def install_openapi(app: FastAPI, vocab_size: int | None = None) -> None:
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()
        if not schema.get("x-jackfield-contract"):
            finish(schema, vocab_size)
            schema["x-jackfield-contract"] = True
        return schema

    app.openapi = openapi


def finish(schema: dict, vocab_size: int | None) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _add(components, r.ErrorResponse, r.AnthropicErrorResponse)
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            _hoist_body(op, components)
            _document_errors(path, op, components)
            _document_success(path, method, op, components)
    if vocab_size:
        _bound_token_ids(schema, vocab_size)


def _add(components: dict, *models) -> None:
    for model in models:
        adapter = TypeAdapter(model)
        sub = adapter.json_schema(ref_template=REF)
        for name, definition in sub.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(getattr(model, "__name__", sub.get("title", "Model")), sub)


def _ref(model, components: dict | None = None) -> dict:
    """A schema referring to `model`'s component; a union of models inline (its $defs hoisted)."""
    if isinstance(model, type):
        return {"$ref": REF.format(model=model.__name__)}
    schema = TypeAdapter(model).json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        (components if components is not None else {}).setdefault(name, definition)
    return schema


def _hoist_body(op: dict, components: dict) -> None:
    """A body schema given inline (json_body_doc): its $defs and itself become components."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = content.get("schema")
    if not schema or "$ref" in schema:
        return
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    if "title" in schema:
        components.setdefault(schema["title"], schema)
        content["schema"] = {"$ref": REF.format(model=schema["title"])}


def _body_properties(op: dict, components: dict) -> set[str]:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    if ref:
        schema = components.get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {}))


def _document_errors(path: str, op: dict, components: dict) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    statuses = {401, 503}
    if "requestBody" in op or op.get("parameters"):
        statuses |= {400}
    if "requestBody" in op:
        statuses |= {413}
    props = _body_properties(op, components)
    statuses |= ({404} if "model" in props else set()) | ({408} if "timeout" in props else set())
    model = r.AnthropicErrorResponse if is_anthropic(path) else r.ErrorResponse
    for status in [*statuses, *(int(s) for s in responses if s.isdigit() and int(s) >= 400)]:
        entry = responses.setdefault(str(status), {"description": ERROR_TEXT.get(status, "Error")})
        entry["content"] = {"application/json": {"schema": _ref(model)}}


def _document_success(path: str, method: str, op: dict, components: dict) -> None:
    ok = op.setdefault("responses", {}).setdefault("200", {"description": "Successful Response"})
    if (path, method) in TEXT_RESPONSES:
        ok["content"] = {TEXT_RESPONSES[path, method]: {"schema": {"type": "string"}}}
        return
    if (path, method) not in RESPONSES:
        return
    model, streamed = RESPONSES[path, method]
    _add(components, *([model] if isinstance(model, type) else [m for m in model.__args__ if isinstance(m, type)]))
    ok["content"] = {"application/json": {"schema": _ref(model, components)}, **streamed}


def below_pattern(n: int) -> str:
    """A regex matching the decimal numbers 0 .. n - 1 (no leading zeros, n >= 1)."""
    top = str(n - 1)
    k = len(top)
    alts = ["[0-9]" if k > 1 else f"[0-{top}]"]
    if k > 2:
        alts.append(f"[1-9][0-9]{{1,{k - 2}}}")
    for i in range(k if k > 1 else 0):
        low, digit = (1 if i == 0 else 0), int(top[i])
        if digit > low:
            alts.append(top[:i] + f"[{low}-{digit - 1}]" + "[0-9]" * (k - i - 1))
    if k > 1:
        alts.append(top)
    return "^(" + "|".join(alts) + ")$"


def _bound_token_ids(node: Any, vocab_size: int) -> None:
    """Every schema marked `x-token-id` gets `maximum: vocab_size - 1`; a map keyed by token ids
    (logit_bias) gets keys matching 0 .. vocab_size - 1 and no others."""
    if isinstance(node, dict):
        keys = node.get("propertyNames")
        if isinstance(keys, dict) and keys.get("x-token-id"):  # a map keyed by token ids (logit_bias)
            pattern = below_pattern(vocab_size)
            node["propertyNames"] = {"pattern": pattern}
            values = list(node.pop("patternProperties", {}).values())
            node["patternProperties"] = {pattern: values[0] if values else {}}
            node["additionalProperties"] = False
        elif node.get("x-token-id"):
            node["maximum"] = vocab_size - 1
        for value in node.values():
            _bound_token_ids(value, vocab_size)
    elif isinstance(node, list):
        for value in node:
            _bound_token_ids(value, vocab_size)
