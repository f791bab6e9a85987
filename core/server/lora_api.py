"""LoRA adapters over HTTP: which adapter a request runs, and loading / unloading at run time.

A request names its adapter with `model: "<served model>:<adapter>"` (or the bare adapter name, the
vLLM convention; `/v1/models` lists adapters under their `<model>:<adapter>` ids) or with
`lora_path: "<adapter>"` (SGLang's field). An adapter that is not loaded but lies in `lora_dir` is
loaded on first use. Unknown adapters answer 404.

`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` reads a PEFT directory; with `lora_dir` set
the path is resolved inside it (the name alone is enough) and a path outside it is refused with 403
before anything is read. `POST /v1/unload_lora_adapter {"lora_name"}` answers once the adapter's
running and queued requests have finished. Both sit behind the API key when one is set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field

from jackfield.config import LORA_NAME
from jackfield.server.app import ServerState, server_state
from jackfield.server.errors import APIError
from jackfield.server.file_paths import resolved_below
from jackfield.server.openapi import error_responses, json_body_doc
from jackfield.server.protocol import Body, Text, json_body

router = APIRouter()


AdapterName = Annotated[str, Field(pattern="^" + LORA_NAME.pattern + "$")]


class LoadLoRARequest(Body):
    lora_name: AdapterName
    lora_path: Text | None = Field(None, description="a PEFT directory (below lora_dir when it is set)")


class UnloadLoRARequest(Body):
    lora_name: AdapterName


def adapter_models(st: ServerState) -> list[dict]:
    """The /v1/models entries of the loaded adapters."""
    tm = st.tokenizer_manager
    return [{"id": f"{st.model_name}:{name}", "object": "model", "created": int(st.started_at), "owned_by": "jackfield",
             "root": a.get("path"), "parent": st.model_name, "max_model_len": st.info.context_len,
             "lora": {"name": name, "rank": a.get("rank"), "lora_alpha": a.get("lora_alpha"),
                      "target_modules": a.get("target_modules")}}
            for name, a in sorted(tm.lora_adapters.items())]


def _split_model(st: ServerState, model: str | None) -> str | None:
    """The adapter `model` names, or None for the base model; 404 for another model."""
    if not model:
        return None
    try:
        st.check_model(model)
        return None
    except APIError:
        if model in st.tokenizer_manager.lora_adapters:
            return model
        base, sep, adapter = model.rpartition(":")
        if not sep:
            raise
        st.check_model(base)
        return adapter


async def request_adapter(st: ServerState, model: str | None, lora_path) -> str | None:
    """The adapter a request runs (None: the base model), loading it from `lora_dir` on first use."""
    from_model = _split_model(st, model)
    if lora_path is not None and not isinstance(lora_path, str):
        raise APIError(400, "lora_path must be the name of a loaded LoRA adapter", param="lora_path")
    if from_model and lora_path and from_model != lora_path:
        raise APIError(400, f"model names the LoRA adapter '{from_model}' but lora_path names '{lora_path}'",
                       param="lora_path")
    name, param = (from_model, "model") if from_model else (lora_path, "lora_path")
    if name:
        await ensure_loaded(st, name, param)
    return name or None


async def ensure_loaded(st: ServerState, name: str, param: str) -> None:
    tm = st.tokenizer_manager
    if name in tm.lora_adapters:
        return
    lora_dir = st.settings.lora_dir
    found = resolved_below(lora_dir, name) if lora_dir and LORA_NAME.fullmatch(name) else None
    if found is None or not (found / "adapter_config.json").is_file():
        where = f"; it is not in lora_dir either" if lora_dir else ""
        raise APIError(404, f"the LoRA adapter '{name}' is not loaded{where}", param=param, code="model_not_found")
    try:
        await _load(st, name, str(found))
    except APIError:
        if name not in tm.lora_adapters:  # else a concurrent request loaded it first
            raise


async def _load(st: ServerState, name: str, path: str) -> dict:
    return _answer(await st.tokenizer_manager.load_lora(name, path))


def _answer(out, param: str | None = None) -> dict:
    """The route's JSON for the scheduler's LoRAUpdateOut, or its error."""
    if not out.ok:
        raise APIError(out.status, out.message, param=out.param or param)
    return {"ok": True, "message": out.message, "adapters": out.adapters}


async def _lora_body(request: Request, model: type[Body]):
    """(body, server state) of a load / unload request; 400 when the server runs without LoRA."""
    body = await json_body(request, model)
    st = server_state(request)
    if not st.tokenizer_manager.lora_enabled:
        raise APIError(400, "LoRA is off: start the server with --lora-paths, --lora-dir or --enable-lora")
    return body, st


LOAD_DOC = {"openapi_extra": json_body_doc(LoadLoRARequest), "responses": error_responses(403, 404)}
UNLOAD_DOC = {"openapi_extra": json_body_doc(UnloadLoRARequest), "responses": error_responses(404)}


@router.post("/v1/load_lora_adapter", **LOAD_DOC)
@router.post("/load_lora_adapter", **LOAD_DOC)
async def load_lora_adapter(request: Request):
    body, st = await _lora_body(request, LoadLoRARequest)
    if not LORA_NAME.fullmatch(body.lora_name):
        raise APIError(400, f"lora_name '{body.lora_name}' must be letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit", param="lora_name")
    lora_dir = st.settings.lora_dir
    if lora_dir:
        path = resolved_below(lora_dir, body.lora_path or body.lora_name)
        if path is None:
            raise APIError(403, f"lora_path '{body.lora_path}' is outside lora_dir; adapters load only from there",
                           param="lora_path")
    elif body.lora_path:
        path = Path(body.lora_path).expanduser()
    else:
        raise APIError(400, "missing lora_path (set lora_dir to load adapters by name)", param="lora_path")
    return await _load(st, body.lora_name, str(path))


@router.post("/v1/unload_lora_adapter", **UNLOAD_DOC)
@router.post("/unload_lora_adapter", **UNLOAD_DOC)
async def unload_lora_adapter(request: Request):
    body, st = await _lora_body(request, UnloadLoRARequest)
    return _answer(await st.tokenizer_manager.unload_lora(body.lora_name), "lora_name")
