"""The FastAPI app: ServerState (what handlers and plugins see) and `build_app`.

Routes come from one module per API family; plugins add theirs through the
`jackfield_add_http_routes(app, server)` hook, called once while the app is built.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from jackfield.config import Settings
from jackfield.engine_loop import EngineInfo
from jackfield.loader.gguf import cache_root
from jackfield.server.batch_runner import BatchRunner
from jackfield.server.drain import DrainGate
from jackfield.server.errors import APIError, install_error_handlers
from jackfield.server.file_store import FileStore
from jackfield.server.metrics import ServerMetrics
from jackfield.server.middleware import (EXEMPT_PATHS, APIKeyMiddleware, BodyLimitMiddleware, JSONBodyMiddleware,
                                         RequestMetricsMiddleware)
from jackfield.server.openapi import install_openapi
from jackfield.server.parsers import ChatParsers
from jackfield.server.tokenizer_manager import TokenizerManager

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """The running server: settings, engine info, the tokenizer manager and health."""

    settings: Settings
    info: EngineInfo
    tokenizer_manager: TokenizerManager
    metrics: ServerMetrics
    pm: Any = None
    plugin_records: list = field(default_factory=list)
    tokenizer_path: str | None = None
    process_ids: dict[str, int] = field(default_factory=dict)  # "scheduler"/"detokenizer" -> pid
    files: Any = None            # FileStore of /v1/files (set by build_app)
    batches: Any = None          # BatchRunner of /v1/batches (set by build_app)
    parsers: ChatParsers = field(default_factory=ChatParsers)  # tool-call and reasoning parsers of the chat APIs
    ready: bool = False          # model loaded and warm-up done
    failure: str | None = None   # set when a subprocess died; the server is then unhealthy
    draining: bool = False       # shutting down: no new requests are admitted (drain.py)
    active_requests: int = 0     # HTTP requests admitted and not yet answered (drain.py)
    started_at: float = field(default_factory=time.time)

    @property
    def healthy(self) -> bool:
        return self.ready and self.failure is None and not self.draining

    @property
    def selection(self) -> dict:
        """The selected component per kind and why (EngineInfo.components)."""
        return self.info.components

    @property
    def tokenizer(self):
        return self.tokenizer_manager.tokenizer

    @property
    def model_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        path = Path(self.info.model_path)
        return path.stem if path.is_file() else path.name

    def check_model(self, name: str | None) -> None:
        """404 `model_not_found` unless `name` is empty or names the served model."""
        if not name:
            return
        accepted = {self.model_name, self.info.model_path, Path(self.info.model_path).name}
        if name not in accepted and name.removesuffix(":latest") not in accepted:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")


    def check_generation(self) -> None:
        """400 when the model is served as an embedding model (`--is-embedding` or detected)."""
        if self.info.embedding.is_embedding:
            raise APIError(400, f"'{self.model_name}' is served as an embedding model "
                                f"({self.info.embedding.reason}): use /v1/embeddings or /api/embed",
                           code="model_not_generative")


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def build_app(state: ServerState) -> FastAPI:
    from jackfield.server import (anthropic_api, batch_api, embeddings_api, lora_api, native_api, ollama_api,
                                  openai_api, status_api, tokenize_api)

    app = FastAPI(title="jackfield", version=_version())
    app.state.server = state
    s = state.settings
    state.files = FileStore(s.file_storage_dir or cache_root() / "files", s.max_upload_bytes)
    state.batches = BatchRunner(app, state.files, s.batch_concurrency, s.api_key)
    install_error_handlers(app)
    install_openapi(app, getattr(getattr(state.info, "model_config", None), "vocab_size", None))
    for module in (openai_api, embeddings_api, batch_api, anthropic_api, ollama_api, native_api, tokenize_api,
                   status_api, lora_api):
        app.include_router(module.router)
    if state.pm is not None:
        try:
            state.pm.hook.jackfield_add_http_routes(app=app, server=state)
        except Exception:
            log.exception("a plugin failed in jackfield_add_http_routes; its routes are missing")
    # Added innermost first: CORS (when on) answers preflights and labels every response, errors
    # included; the drain gate counts and refuses before any body is read; the body limit applies
    # before authentication so an unauthenticated client cannot make the server buffer a huge body;
    # JSONBodyMiddleware makes every non-multipart body JSON whatever its Content-Type.
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(APIKeyMiddleware, api_key=s.api_key,
                       exempt=EXEMPT_PATHS + (("/metrics",) if s.metrics_public else ()))
    uploads = max(s.max_request_bytes, s.max_upload_bytes + (1 << 20))  # the file and its multipart framing
    app.add_middleware(BodyLimitMiddleware, max_bytes=s.max_request_bytes,
                       per_path={"/v1/files": (uploads, "max_upload_bytes")})
    app.add_middleware(DrainGate, state=state)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    if s.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(s.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After"])
    return app


def _version() -> str:
    from jackfield import __version__

    return __version__
