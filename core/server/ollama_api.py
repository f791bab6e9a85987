"""Ollama-compatible API: POST /api/generate, POST /api/chat (NDJSON streams by default), POST /api/embed,
POST /api/show, GET /api/tags, GET /api/ps, GET /api/version."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Request

from jackfield.server.app import ServerState, server_state
from jackfield.embedding import normalized
from jackfield.server.embeddings_api import run_embeddings
from jackfield.server.errors import APIError
from jackfield.server.generation import (RequestGroup, abort_error, request_priority, request_timeout,
                                         until_disconnected)
from jackfield.server.openapi import json_body_doc
from jackfield.server.lora_api import request_adapter
from jackfield.server.prompts import chat_default, chat_prompt, encode_text, max_new_tokens, sampling_params
from jackfield.server.protocol import (OllamaChatRequest, OllamaEmbedRequest, OllamaGenerateRequest, OllamaOptions,
                                      OllamaShowRequest, json_body, ollama_format_values)
from jackfield.server.sse import ndjson, ndjson_response

router = APIRouter()
OLLAMA_NAMES = {"max_new_tokens": "options.num_predict", "repetition_penalty": "options.repeat_penalty",
                "json_schema": "format"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _params(st: ServerState, opts: OllamaOptions, ids: list[int], fmt):
    tm = st.tokenizer_manager
    requested = opts.num_predict
    if requested is not None and requested < 0:  # -1: unlimited, -2: fill the context
        requested = None if requested == -1 else tm.context_len - len(ids)
    max_new = max_new_tokens(requested, [ids], tm.context_len, chat_default(tm.context_len), "options.num_predict",
                             "prompt")
    values = {"max_new_tokens": max_new, "temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k,
              "min_p": opts.min_p, "stop": opts.stop, "seed": opts.seed, "repetition_penalty": opts.repeat_penalty,
              "presence_penalty": opts.presence_penalty, "frequency_penalty": opts.frequency_penalty,
              **ollama_format_values(fmt)}
    return sampling_params(values, tm.vocab_size, OLLAMA_NAMES)


@router.post("/api/generate", openapi_extra=json_body_doc(OllamaGenerateRequest))
async def generate(request: Request):
    body = await json_body(request, OllamaGenerateRequest)
    st = server_state(request)
    lora = await request_adapter(st, body.model, None)
    st.check_generation()
    if not body.prompt:  # Ollama's "load the model" request
        return {"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
    tm = st.tokenizer_manager
    if body.raw or tm.tokenizer is None or tm.tokenizer.chat_template is None:
        ids = encode_text(tm, (body.system + "\n" if body.system else "") + body.prompt, "prompt")
    else:
        msgs = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}]
        ids = chat_prompt(tm, msgs, param="prompt")
    return await _run(st, request, body, ids, lambda text: {"response": text}, lora)


@router.post("/api/chat", openapi_extra=json_body_doc(OllamaChatRequest))
async def chat(request: Request):
    body = await json_body(request, OllamaChatRequest)
    st = server_state(request)
    lora = await request_adapter(st, body.model, None)
    st.check_generation()
    ids = chat_prompt(st.tokenizer_manager, [{"role": m.role, "content": m.content} for m in body.messages])
    return await _run(st, request, body, ids, lambda text: {"message": {"role": "assistant", "content": text}}, lora)


async def _run(st: ServerState, request: Request, body: OllamaGenerateRequest | OllamaChatRequest, ids: list[int],
               payload, lora: str | None = None):
    start = time.monotonic()
    model = body.model
    tm = st.tokenizer_manager
    group = RequestGroup(tm, [ids], _params(st, body.options, ids, body.format), priority=request_priority(request),
                         timeout=request_timeout(tm, body.timeout), lora=lora)
    if body.stream:
        return ndjson_response(_stream(group.start(), model, payload, start))
    with group:
        (result,) = await until_disconnected(request, group.collect())
    return {"model": model, "created_at": _now(), **payload(result.text), "done": True,
            **_final_stats(result.finish, result.prompt_tokens, result.completion_tokens, start, result.first_token_at)}


async def _stream(group: RequestGroup, model: str, payload, start: float):
    first_token = None
    try:
        async for _, out in group.outputs():
            if out.finished is not None and out.finished.kind == "abort":
                yield ndjson({"error": abort_error(out.finished).message})
                return
            first_token = first_token or (time.monotonic() if out.new_token_ids else None)
            if out.text:
                yield ndjson({"model": model, "created_at": _now(), **payload(out.text), "done": False})
            if out.finished is not None:
                stats = _final_stats(out.finished, out.prompt_tokens, out.completion_tokens, start, first_token)
                yield ndjson({"model": model, "created_at": _now(), **payload(""), "done": True, **stats})
    except Exception as exc:
        yield ndjson({"error": f"internal server error ({type(exc).__name__})"})
    finally:
        group.close()


def _final_stats(finish, prompt_tokens: int, completion_tokens: int, start: float, first_token: float | None) -> dict:
    now = time.monotonic()
    first = first_token or now
    return {"done_reason": finish.to_openai() if finish else "stop", "total_duration": int((now - start) * 1e9),
            "load_duration": 0, "prompt_eval_count": prompt_tokens, "prompt_eval_duration": int((first - start) * 1e9),
            "eval_count": completion_tokens, "eval_duration": int((now - first) * 1e9)}


def _model_entry(st: ServerState) -> dict:
    """The served model as /api/tags and /api/ps list it."""
    path = Path(st.info.model_path)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))
    modified = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")
    return {"name": st.model_name, "model": st.model_name, "modified_at": modified, "size": size, "digest": "",
            "details": _details(st)}


def _details(st: ServerState) -> dict:
    path = Path(st.info.model_path)
    family = st.info.model_config.model_type or st.info.model_config.architectures[0]
    return {"format": path.suffix.lstrip(".") or "safetensors", "family": family, "families": [family],
            "parameter_size": "", "quantization_level": st.info.components.get("quantization", {}).get("name")}


@router.get("/api/tags")
async def tags(request: Request) -> dict:
    return {"models": [_model_entry(server_state(request))]}


@router.get("/api/ps")
async def ps(request: Request) -> dict:
    """The loaded model: always the served one, which stays loaded (no expiry)."""
    st = server_state(request)
    entry = _model_entry(st)
    return {"models": [{**entry, "expires_at": None,
                        "size_vram": entry["size"] if st.info.device.startswith("cuda") else 0}]}


@router.post("/api/show", openapi_extra=json_body_doc(OllamaShowRequest))
async def show(request: Request) -> dict:
    body = await json_body(request, OllamaShowRequest)
    st = server_state(request)
    name = body.model if body.model is not None else body.name
    if name is None:
        raise APIError(400, "missing required parameter: 'model'", param="model")
    st.check_model(name)
    cfg, tok = st.info.model_config, st.tokenizer
    arch = cfg.model_type or "llama"
    info = {"general.architecture": arch, "general.basename": st.model_name,
            f"{arch}.context_length": st.info.context_len, f"{arch}.embedding_length": cfg.hidden_size,
            f"{arch}.block_count": cfg.num_layers, f"{arch}.attention.head_count": cfg.num_heads,
            f"{arch}.attention.head_count_kv": cfg.num_kv_heads, f"{arch}.vocab_size": cfg.vocab_size}
    template = (tok.chat_template if tok is not None else None) or ""
    capabilities = ["embedding"] if st.info.embedding.is_embedding else ["completion", "embedding"]
    return {"modelfile": f"FROM {st.info.model_path}\n", "parameters": "", "template": template,
            "details": _details(st), "model_info": info, "capabilities": capabilities,
            "modified_at": _model_entry(st)["modified_at"]}


@router.post("/api/embed", openapi_extra=json_body_doc(OllamaEmbedRequest))
async def embed(request: Request) -> dict:
    """Ollama's embeddings: every input pooled as the server pools (last token by default), L2-normalized."""
    body = await json_body(request, OllamaEmbedRequest)
    st = server_state(request)
    st.check_model(body.model)
    start = time.monotonic()
    texts = [body.input] if isinstance(body.input, str) else body.input
    tm = st.tokenizer_manager
    prompts = [encode_text(tm, t, f"input[{i}]") for i, t in enumerate(texts)]
    limit = tm.context_len - 1
    if body.truncate:
        prompts = [ids[:limit] for ids in prompts]
    results = await run_embeddings(st, request, prompts, "input")
    return {"model": body.model, "embeddings": [normalized(r.embedding) for r in results],
            "total_duration": int((time.monotonic() - start) * 1e9), "load_duration": 0,
            "prompt_eval_count": sum(len(p) for p in prompts)}


@router.get("/api/version")
async def version() -> dict:
    from jackfield import __version__

    return {"version": __version__}
