"""Schemathesis hooks of the API fuzzing run: schema-valid bodies that break a rule no JSON schema
states are not sent as valid data: more generations than one call may ask for (prompts x n), and
structured-output constraints (a regex, a grammar or a JSON schema is valid only if its compiler
says so; two constraints in one body exclude each other, a rule left out of the schema because it
made generation several times slower; grammar_backend needs a constraint), and tool calling (a
tool's parameters must compile as a JSON schema of an object; tool_use blocks belong to assistant
turns and tool_result blocks to user turns; past calls carry JSON arguments), /v1/completions
`best_of` equal to `n` (no best-of selection: an equality of two fields), and what only the
served model decides: embeddings `dimensions` (only the model's own width), /tokenize's
`chat_template_kwargs` (template variables the chat template itself checks, and which must not
collide with the renderer's own arguments) and `continue_final_message` (the last message's content
must appear verbatim in what the template renders). Each is refused by the server with a 400 and
documented in docs/server.md (tests/grammar covers the constraint compilers' errors,
tests/server/test_chat_tools.py the tool checks, test_embeddings_tokenize_api.py the others). Bodies meant to be invalid (negative cases) are sent as generated."""
from __future__ import annotations

import schemathesis
from schemathesis.generation import GenerationMode

MAX_GENERATIONS = 256  # generation.MAX_REQUESTS_PER_CALL: prompts x n
CONSTRAINTS = ("regex", "ebnf", "json_schema", "choices", "grammar_backend")  # the last needs one of the others


def _constrained(body: dict) -> bool:
    sp = body.get("sampling_params") if isinstance(body.get("sampling_params"), dict) else {}
    rf = body.get("response_format") if isinstance(body.get("response_format"), dict) else {}
    return (any(body.get(k) is not None or sp.get(k) is not None for k in CONSTRAINTS)
            or rf.get("type") == "json_schema" or isinstance(body.get("format"), dict))


def _uses_tools(body: dict) -> bool:
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    blocks = [b for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list) for b in m["content"]]
    return (body.get("tools") is not None or body.get("tool_choice") is not None
            or any(isinstance(m, dict) and (m.get("tool_calls") is not None or m.get("role") == "tool") for m in messages)
            or any(isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result") for b in blocks))


def servable(body) -> bool:
    if not isinstance(body, dict):
        return True
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else 1
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    return (prompts * n <= MAX_GENERATIONS and not _constrained(body) and not _uses_tools(body)
            and not (body.get("top_logprobs") is not None and body.get("logprobs") is not True)
            and body.get("best_of") in (None, n) and body.get("dimensions") is None and not body.get("chat_template_kwargs")
            and body.get("continue_final_message") is not True)


@schemathesis.hook
def filter_body(ctx, body) -> bool:
    """Valid data of the examples and fuzzing phases."""
    return servable(body)


@schemathesis.hook
def filter_case(ctx, case) -> bool:
    """The coverage phase's valid cases (it does not run filter_body)."""
    meta = getattr(case, "meta", None)
    positive = meta is None or meta.generation.mode == GenerationMode.POSITIVE
    return not positive or servable(case.body)
