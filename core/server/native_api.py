"""SGLang's native generation API: POST /generate (`text` or `input_ids`, `sampling_params`, `stream`).

With `return_logprob`, `meta_info` holds `output_token_logprobs` / `output_top_logprobs` entries
`[logprob, token_id, text]` (text None with `return_text_in_logprobs: false`); `logprob_start_len`
>= 0 adds `input_token_logprobs` / `input_top_logprobs` for the prompt from that position (the first
prompt token's logprob and alternatives are None).

A single prompt answers one object; a list of prompts, or n > 1, answers a list (prompt i's j-th
sample at i*n + j). Streamed events carry the cumulative text and output ids so far, plus `index`
when there are several.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

from jackfield.io_struct import FinishReason
from jackfield.server.app import ServerState, server_state
from jackfield.server.errors import APIError
from jackfield.server.generation import (RequestGroup, Result, request_priority, request_timeout, stream_group,
                                         until_disconnected)
from jackfield.server.lora_api import request_adapter
from jackfield.server.openai_format import token_text
from jackfield.server.prompts import check_token_ids, encode_text, max_new_tokens, sampling_params
from jackfield.server.protocol import GenerateRequest
from jackfield.server.sse import sse_response
from jackfield.spec.meta import spec_meta

router = APIRouter()
DEFAULT_MAX_NEW_TOKENS = 128


def _prompts(st: ServerState, body: GenerateRequest) -> tuple[list[list[int]], bool]:
    tm = st.tokenizer_manager
    if (body.text is None) == (body.input_ids is None):
        raise APIError(400, "give exactly one of 'text' and 'input_ids'", param="text")
    if body.text is not None:
        if isinstance(body.text, list) and body.text:
            return [encode_text(tm, t, f"text[{i}]") for i, t in enumerate(body.text)], True
        return [encode_text(tm, body.text, "text")], False
    ids = body.input_ids
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return [check_token_ids(p, tm.vocab_size, f"input_ids[{i}]") for i, p in enumerate(ids)], True
    return [check_token_ids(ids, tm.vocab_size, "input_ids")], False


async def _loras(st: ServerState, lora_path, count: int, batch: bool):
    """The adapter of every prompt: one name for all, or (for a list of prompts) one per prompt."""
    if isinstance(lora_path, list):
        if not batch or len(lora_path) != count:
            raise APIError(400, f"lora_path holds {len(lora_path)} entries for {count} prompt(s)", param="lora_path")
        return [await request_adapter(st, None, name) for name in lora_path]
    return await request_adapter(st, None, lora_path)


def finish_info(finish: FinishReason | None) -> dict | None:
    if finish is None:
        return None
    info = {"type": finish.kind}
    if finish.kind == "stop":
        info["matched"] = finish.matched
    elif finish.kind == "abort":
        info["message"] = finish.message
    return info


def _meta(st: ServerState, rid: str, r: Result, body: GenerateRequest) -> dict:
    meta = {"id": rid, "finish_reason": finish_info(r.finish), "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "cached_tokens": r.cached_tokens}
    if r.spec:
        meta.update(spec_meta(r.spec))
    if body.return_logprob:
        tok = st.tokenizer if body.return_text_in_logprobs else None

        def text(t: int) -> str | None:
            return token_text(tok, t) if tok is not None else None

        meta["output_token_logprobs"] = [[lp.logprob, lp.token_id, text(lp.token_id)] for lp in r.logprobs]
        meta["output_top_logprobs"] = [[[v, t, text(t)] for t, v in lp.top] for lp in r.logprobs]
        if body.logprob_start_len >= 0:
            inputs = r.input_logprobs or []
            meta["input_token_logprobs"] = [[lp.logprob, lp.token_id, text(lp.token_id)] for lp in inputs]
            meta["input_top_logprobs"] = [None if lp.logprob is None else [[v, t, text(t)] for t, v in lp.top]
                                          for lp in inputs]
    return meta


def _check_logprob_start(body: GenerateRequest, prompts: list[list[int]]) -> None:
    start = body.logprob_start_len  # -1 or more (the schema)
    if start >= 0 and not body.return_logprob:
        raise APIError(400, "logprob_start_len needs return_logprob set to true", param="logprob_start_len")
    shortest = min(len(p) for p in prompts)
    if start >= shortest:
        raise APIError(400, f"logprob_start_len ({start}) must be below the prompt length ({shortest} tokens)",
                       param="logprob_start_len")


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    st = server_state(request)
    st.check_generation()
    tm = st.tokenizer_manager
    prompts, batch = _prompts(st, body)
    _check_logprob_start(body, prompts)
    sp = body.sampling_params.model_dump(exclude_unset=True) if body.sampling_params else {}
    requested = sp.pop("max_new_tokens", None)
    max_new = max_new_tokens(requested, prompts, tm.context_len, lambda _: DEFAULT_MAX_NEW_TOKENS,
                             "sampling_params.max_new_tokens", "input_ids" if body.input_ids is not None else "text")
    params = sampling_params({**sp, "max_new_tokens": max_new, "logprobs": body.return_logprob,
                              "top_logprobs_num": body.top_logprobs_num}, tm.vocab_size)
    group = RequestGroup(tm, prompts, params, params.n, logprob_start_len=body.logprob_start_len,
                         priority=request_priority(request), timeout=request_timeout(tm, body.timeout),
                         lora=await _loras(st, body.lora_path, len(prompts), batch))
    many = batch or params.n > 1
    if body.stream:
        return sse_response(_stream(st, group.start(), body, many))
    with group:
        results = await until_disconnected(request, group.collect())
    outs = [{"text": r.text, "output_ids": r.token_ids, "meta_info": _meta(st, group.rids[r.index], r, body)}
            for r in results]
    return outs if many else outs[0]


def _stream(st: ServerState, group: RequestGroup, body: GenerateRequest, many: bool):
    results = [Result(i) for i in range(group.size)]

    def on_output(i: int, out) -> dict | None:
        r = results[i]
        r.add(out)
        if out.new_token_ids or out.text or out.finished is not None:
            event = {"text": r.text, "output_ids": r.token_ids, "meta_info": _meta(st, group.rids[i], r, body)}
            return {**event, "index": i} if many else event
        return None

    return stream_group(group, on_output)
