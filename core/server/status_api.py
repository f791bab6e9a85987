"""Health, information and maintenance routes: /health, /health_generate, /get_model_info,
/get_server_info, /flush_cache, /v1/plugins and /metrics."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from jackfield.server.admin import admin_only
from jackfield.server.drain import RETRY_AFTER_S
from jackfield.server.app import server_state
from jackfield.server.errors import APIError
from jackfield.server.generation import probe_group
from jackfield.server.openapi import error_responses

router = APIRouter()
log = logging.getLogger(__name__)
HEALTH_GENERATE_TIMEOUT_S = 60.0


def _require_healthy(st) -> None:
    if st.failure is not None:
        raise APIError(503, f"unhealthy: {st.failure}")
    if st.draining:
        raise APIError(503, "the server is shutting down (draining)", code="shutting_down",
                       headers={"Retry-After": str(RETRY_AFTER_S)})
    if not st.ready:
        raise APIError(503, "the server is starting: the model is loading or warming up")


@router.get("/health")
async def health(request: Request):
    _require_healthy(server_state(request))
    return {"status": "ok"}


@router.get("/health_generate")
async def health_generate(request: Request):
    """Healthy only if a one-token generation completes."""
    st = server_state(request)
    _require_healthy(st)
    tm = st.tokenizer_manager
    ids = tm.encode("Hi") if tm.tokenizer is not None else [0]
    with probe_group(st, ids, 1) as group:
        try:
            (result,) = await asyncio.wait_for(group.collect(), HEALTH_GENERATE_TIMEOUT_S)
        except (asyncio.TimeoutError, APIError) as exc:
            raise APIError(503, f"health generation failed: {exc or 'timed out'}") from None
    return {"status": "ok", "completion_tokens": result.completion_tokens}


@router.get("/get_model_info")
async def get_model_info(request: Request) -> dict:
    st = server_state(request)
    info = st.info
    return {"model_path": info.model_path, "tokenizer_path": st.tokenizer_path, "served_model_name": st.model_name,
            "is_generation": not info.embedding.is_embedding,
            "embedding": {"pooling": info.embedding.pooling, "normalize": info.embedding.normalize,
                          "served_as_embedding_model": info.embedding.is_embedding, "reason": info.embedding.reason},
            "architectures": list(info.model_config.architectures),
            "context_len": info.context_len, "max_total_tokens": info.max_total_tokens,
            "max_running_requests": info.max_running_requests, "vocab_size": info.model_config.vocab_size,
            "device": info.device, "dtype": info.dtype, "weight_bytes": info.weight_bytes,
            "kv_cache_dtype": info.kv_cache_dtype, "components": st.selection, "chat_parsers": st.parsers.as_dict()}


@router.get("/get_server_info")
async def get_server_info(request: Request) -> dict:
    """Settings (without the API key), the scheduler's StatsOut fields and the server's state."""
    st = server_state(request)
    stats = await st.tokenizer_manager.get_stats()
    settings = st.settings.model_dump(mode="json", exclude={"api_key"})
    return {**settings, **asdict(stats), "ready": st.ready, "healthy": st.healthy,
            "requests_in_flight": st.tokenizer_manager.num_in_flight, "process_ids": st.process_ids}


@router.post("/flush_cache", dependencies=[Depends(admin_only)], responses=error_responses(403, 409))
async def flush_cache(request: Request):
    """Admin: empty the prefix cache (POST only: a GET that changes state is a cross-site request away)."""
    out = await server_state(request).tokenizer_manager.flush_cache()
    if not out.ok:
        raise APIError(409, out.message or "the cache could not be flushed", code="busy")
    return {"ok": True, "message": "the prefix cache was flushed"}


@router.get("/v1/plugins")
def plugins(request: Request) -> dict:
    """Every discovered component with its availability, the plugins, and the component in use per kind."""
    from jackfield.registry import build_registry

    st = server_state(request)
    registry = build_registry(st.pm, st.plugin_records)
    return {"components": registry.describe(), "plugins": [asdict(p) for p in st.plugin_records],
            "in_use": {**st.selection, **st.parsers.as_dict()}}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    st = server_state(request)
    try:
        st.metrics.update_scheduler(await st.tokenizer_manager.get_stats())
    except Exception as exc:  # still serve the HTTP-side metrics
        log.warning("metrics: scheduler stats unavailable: %s", exc or type(exc).__name__)
    st.metrics.update_processes(st.process_ids)
    return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)
