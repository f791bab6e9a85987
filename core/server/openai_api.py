"""OpenAI-compatible API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}].

`/v1/completions` with `echo` returns the prompt before the completion and, with `logprobs: N`, the
prompt tokens' logprobs too (the first prompt token's is null), read inside the prefill
(`scheduler/prompt_readout.py`); `max_tokens: 0` then returns the prompt's logprobs only.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from jackfield.server.app import ServerState, server_state
from jackfield.server.errors import APIError
from jackfield.server.chat_output import ChatPlan, plan_chat
from jackfield.server.generation import (RequestGroup, request_priority, request_timeout, stream_group,
                                         until_disconnected)
from jackfield.server.lora_api import adapter_models, request_adapter
from jackfield.server.openapi import error_responses
from jackfield.server.openai_format import (COMPLETION_NAMES, OPENAI_NAMES, UsageTracker, chat_delta,
                                            chat_finish_reason, chat_logprobs, chat_message, completion_logprobs,
                                            finish_reason, results_usage)
from jackfield.server.prompts import (MAX_N, chat_default, completion_prompts, encode_text,
                                      max_new_tokens, sampling_params)
from jackfield.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAISampling
from jackfield.server.sse import sse_response
from jackfield.server.tool_prompt import openai_history, render_prompt, takes_tools
from jackfield.server.tools import openai_tools

router = APIRouter()
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "jackfield"
    root: str | None
    max_model_len: int
    parent: str | None = None   # a LoRA adapter's base model
    lora: dict | None = None    # a LoRA adapter's name, rank, lora_alpha, target_modules


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _cards(st: ServerState) -> list[ModelCard]:
    """The served model, then each loaded LoRA adapter (`<model>:<adapter>`)."""
    base = ModelCard(id=st.model_name, created=int(st.started_at), root=st.info.model_path,
                     max_model_len=st.info.context_len)
    return [base] + [ModelCard(**card) for card in adapter_models(st)]


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=_cards(server_state(request)))


@router.get("/v1/models/{model_id:path}", responses=error_responses(404))
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    st = server_state(request)
    cards = _cards(st)
    found = next((c for c in cards if c.id == model_id), None)
    if found is None:
        st.check_model(model_id)  # 404 unless another name of the served model
        found = cards[0]
    return found


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    st = server_state(request)
    tm = st.tokenizer_manager
    lora = await _check_common(st, body)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    plan = plan_chat(st.parsers, openai_tools(body), body.separate_reasoning)
    ids, plan = _chat_prompt(st, body, plan)
    requested, param = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None
                        else (body.max_tokens, "max_tokens"))
    max_new = max_new_tokens(requested, [ids], tm.context_len, chat_default(tm.context_len), param, "messages")
    names = {**OPENAI_NAMES, "max_new_tokens": param}
    values = plan.sampling_values({**body.sampling_values(), "max_new_tokens": max_new, "logprobs": body.logprobs,
                                   "top_logprobs_num": body.top_logprobs})
    params = sampling_params(values, tm.vocab_size, names)
    group = RequestGroup(tm, [ids], params, body.n, priority=request_priority(request),
                         timeout=request_timeout(tm, body.timeout), lora=lora)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": _model_id(st, lora)}
    if body.stream:
        return sse_response(_chat_stream(st, group.start(), body, head, plan))
    with group:
        results = await until_disconnected(request, group.collect())
    choices = []
    for r in results:
        message = chat_message(plan.choice_parser().parse(r.text), plan)
        choices.append({"index": r.index, "message": message,
                        "logprobs": chat_logprobs(st.tokenizer, r.logprobs) if body.logprobs else None,
                        "finish_reason": chat_finish_reason(r.finish, bool(message.get("tool_calls")))})
    return {**head, "object": "chat.completion", "choices": choices, "usage": results_usage(results, body.n)}


def _chat_prompt(st: ServerState, body: ChatCompletionRequest, plan: ChatPlan) -> tuple[list[int], ChatPlan]:
    """The prompt's token ids, with the tools rendered, and the plan completed by the prompt."""
    tm = st.tokenizer_manager
    native = takes_tools(tm.tokenizer.chat_template if tm.tokenizer is not None else None)
    text = render_prompt(tm, openai_history(body.messages, native, plan.parser), plan, native)
    return encode_text(tm, text, "messages", add_special_tokens=False), plan.with_prompt(text)


def _chat_stream(st: ServerState, group: RequestGroup, body: ChatCompletionRequest, head: dict, plan: ChatPlan):
    extra = {"usage": None} if body.include_usage else {}
    tracker = UsageTracker(group.size, body.n)
    splits = [plan.choice_parser() for _ in range(group.size)]

    def chunk(index: int, delta: dict, finish=None, logprobs=None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra}

    def on_output(i: int, out) -> dict | None:
        tracker.add(i, out)
        lps = chat_logprobs(st.tokenizer, out.logprobs) if body.logprobs and out.logprobs else None
        piece = splits[i].feed(out.text or "")
        if out.finished is not None:
            piece.extend(splits[i].finish())
        if not piece.empty or out.finished is not None or lps:
            finish = chat_finish_reason(out.finished, bool(splits[i].call_ids))
            return chunk(i, chat_delta(splits[i], piece, plan), finish, lps)
        return None

    def on_done() -> dict | None:
        if body.include_usage:
            return {**head, "object": "chat.completion.chunk", "choices": [], "usage": tracker.usage()}
        return None

    roles = tuple(chunk(i, {"role": "assistant", "content": ""}) for i in range(group.size))
    return stream_group(group, on_output, on_done, preamble=roles)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    st = server_state(request)
    tm = st.tokenizer_manager
    lora = await _check_common(st, body)
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, f"best_of must equal n ({body.n}): best-of selection is not implemented", param="best_of")
    if body.echo and body.n > 1:
        raise APIError(400, "echo cannot be combined with n > 1", param="echo")
    if body.echo and body.best_of is not None:
        raise APIError(400, "echo cannot be combined with best_of", param="best_of")
    prompts = completion_prompts(tm, body.prompt)
    max_new = max_new_tokens(body.max_tokens, prompts, tm.context_len, lambda _: COMPLETIONS_DEFAULT_MAX_TOKENS,
                             "max_tokens", "prompt")
    want_lp = body.logprobs is not None
    params = sampling_params({**body.sampling_values(), "max_new_tokens": max_new, "logprobs": want_lp,
                              "top_logprobs_num": body.logprobs}, tm.vocab_size, COMPLETION_NAMES)
    echo = [echo_text(st, body.prompt, ids, i) for i, ids in enumerate(prompts)] if body.echo else None
    group = RequestGroup(tm, prompts, params, body.n, logprob_start_len=0 if body.echo and want_lp else -1,
                         priority=request_priority(request), timeout=request_timeout(tm, body.timeout), lora=lora)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": _model_id(st, lora)}
    if body.stream:
        return sse_response(_completion_stream(st, group.start(), body, head, echo))
    with group:
        results = await until_disconnected(request, group.collect())
    choices = []
    for r in results:
        lps = (r.input_logprobs or []) + r.logprobs if body.echo else r.logprobs
        choices.append({"index": r.index, "text": (echo[r.index] if echo else "") + r.text,
                        "logprobs": completion_logprobs(st.tokenizer, lps) if want_lp else None,
                        "finish_reason": finish_reason(r.finish)})
    return {**head, "object": "text_completion", "choices": choices, "usage": results_usage(results, body.n)}


def echo_text(st: ServerState, prompt, ids: list[int], index: int) -> str:
    """The text `echo` returns for prompt `index`: the prompt as sent when it was text, else its ids decoded."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[index]
    return st.tokenizer.decode(ids, skip_special_tokens=False) if st.tokenizer is not None else ""


def _completion_stream(st: ServerState, group: RequestGroup, body: CompletionRequest, head: dict,
                       echo: list[str] | None):
    extra = {"usage": None} if body.include_usage else {}
    tracker = UsageTracker(group.size, body.n)
    offsets = [0] * group.size
    pending_echo = set(range(group.size)) if echo else set()  # the prompt goes out with a choice's first chunk

    def on_output(i: int, out) -> dict | None:
        tracker.add(i, out)
        lps = None
        prefix = ""
        new_lps = out.logprobs or []
        if i in pending_echo:
            pending_echo.discard(i)
            prefix = echo[i]
            new_lps = (out.input_logprobs or []) + new_lps
        out_text = prefix + (out.text or "")
        if body.logprobs is not None and new_lps:
            lps = completion_logprobs(st.tokenizer, new_lps, offsets[i])
            offsets[i] = lps["text_offset"][-1] + len(lps["tokens"][-1])
        if out_text or out.finished is not None or lps:
            choice = {"index": i, "text": out_text, "logprobs": lps, "finish_reason": finish_reason(out.finished)}
            return {**head, "object": "text_completion", "choices": [choice], **extra}
        return None

    def on_done() -> dict | None:
        if body.include_usage:
            return {**head, "object": "text_completion", "choices": [], "usage": tracker.usage()}
        return None

    return stream_group(group, on_output, on_done)


async def _check_common(st: ServerState, body: OpenAISampling) -> str | None:
    """Check the fields every OpenAI call shares; returns the LoRA adapter it runs (None: base)."""
    st.check_generation()
    if not 1 <= body.n <= MAX_N:
        raise APIError(400, f"n must be in [1, {MAX_N}], got {body.n}", param="n")
    return await request_adapter(st, body.model, body.lora_path)


def _model_id(st: ServerState, lora: str | None) -> str:
    return f"{st.model_name}:{lora}" if lora else st.model_name
