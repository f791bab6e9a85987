"""Schemathesis hooks of the API fuzzing run: schema-valid bodies that break a rule no JSON schema
can state (it relates two fields) are not generated as valid data. Each rule is enforced by the
server with a 400 and documented in docs/server.md."""
from __future__ import annotations

import schemathesis

MAX_GENERATIONS = 256  # generation.MAX_REQUESTS_PER_CALL: prompts x n


@schemathesis.hook
def filter_body(ctx, body) -> bool:
    if not isinstance(body, dict):
        return True
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else 1
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    return (prompts * n <= MAX_GENERATIONS
            and not (body.get("top_logprobs") is not None and body.get("logprobs") is not True))
