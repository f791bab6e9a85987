"""From API request fields to engine inputs: prompt token ids, max_new_tokens, SamplingParams.

Everything here raises APIError (HTTP 400) naming the offending API parameter, so no bad value
reaches the scheduler: token ids outside the vocabulary, prompts at or over the context length
(texts too long to fit are refused before they are tokenized), and sampling values SamplingParams
rejects. A max_tokens larger than the room the prompt leaves is clamped to that room.
"""
from __future__ import annotations

from typing import Any, Callable

from jackfield.sampling.params import SamplingParamError, SamplingParams
from jackfield.server.errors import APIError, from_sampling_error
from jackfield.server.protocol import MAX_N
from jackfield.server.tokenizer_manager import TokenizerManager

CHAT_MAX_TOKENS_CAP = 1024
ROLE_ALIASES = {"developer": "system"}


def sampling_params(values: dict[str, Any], vocab_size: int, rename: dict[str, str] | None = None) -> SamplingParams:
    """SamplingParams from SGLang-named values (None = default); errors use the API's names via `rename`.
    A min_new_tokens above max_new_tokens is lowered to it (max_new_tokens may itself have been
    clamped to the context)."""
    low, high = values.get("min_new_tokens"), values.get("max_new_tokens")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        values = {**values, "min_new_tokens": high}
    try:
        params = SamplingParams.from_dict({k: v for k, v in values.items() if v is not None}, vocab_size)
    except SamplingParamError as exc:
        raise from_sampling_error(exc, rename) from None
    if params.n > MAX_N:
        raise APIError(400, f"n must be at most {MAX_N}, got {params.n}", param="n")
    return params


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> list[int]:
    if not isinstance(ids, list):
        raise APIError(400, f"{param} must be a list of token ids", param=param)
    if not ids:
        raise APIError(400, f"{param} is empty", param=param)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise APIError(400, f"{param} holds token id {t!r}, outside the vocabulary [0, {vocab_size})", param=param)
    return list(ids)


def encode_text(tm: TokenizerManager, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
    if not isinstance(text, str):
        raise APIError(400, f"{param} must be a string, got {type(text).__name__}", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in the JSON): no tokenizer takes it
        raise APIError(400, f"{param} is not valid Unicode: {exc.reason} at character {exc.start}", param=param) from None
    if len(text) > tm.max_prompt_chars:
        raise APIError(400, f"the prompt is {len(text)} characters, more than the context length of "
                            f"{tm.context_len} tokens can hold ({tm.max_prompt_chars} characters)",
                       param=param, code="context_length_exceeded")
    try:
        ids = tm.encode(text, add_special_tokens=add_special_tokens)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param) from None
    if not ids:
        raise APIError(400, f"{param} is empty", param=param)
    return ids


def completion_prompts(tm: TokenizerManager, prompt: Any, param: str = "prompt") -> list[list[int]]:
    """A prompt given as a string, a list of strings, token ids or a list of token-id lists."""
    if isinstance(prompt, str):
        return [encode_text(tm, prompt, param)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [encode_text(tm, p, f"{param}[{i}]") for i, p in enumerate(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return [check_token_ids(p, tm.vocab_size, f"{param}[{i}]") for i, p in enumerate(prompt)]
    if isinstance(prompt, list) and prompt:
        return [check_token_ids(prompt, tm.vocab_size, param)]
    raise APIError(400, f"{param} must be a non-empty string, list of strings, token ids or list of token-id lists",
                   param=param)


def content_text(content: Any, param: str) -> str:
    """Message content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{param} must be a string or a list of text parts", param=param)
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if kind != "text" or not isinstance(text, str):
            raise APIError(400, f"{param}: only text content is supported, got a {kind!r} part", param=param)
        parts.append(text)
    return "".join(parts)


def chat_prompt(tm: TokenizerManager, messages: list[dict], param: str = "messages", **template_kwargs) -> list[int]:
    """Apply the model's chat template to plain {role, content} dicts and tokenize the result."""
    return encode_text(tm, chat_text(tm, messages, param, **template_kwargs), param, add_special_tokens=False)


def chat_text(tm: TokenizerManager, messages: list[dict], param: str = "messages", add_generation_prompt: bool = True,
              continue_final_message: bool = False, **template_kwargs) -> str:
    """The model's chat template applied to template messages (`tools=` and the like as keywords);
    `continue_final_message` renders without a generation prompt and cuts the text right after the
    last message's content (left open for the model)."""
    if not messages:
        raise APIError(400, f"{param} must hold at least one message", param=param)
    if tm.tokenizer is None:
        raise APIError(400, "this model has no tokenizer, so it has no chat template", param=param)
    msgs = [{**m, "role": ROLE_ALIASES.get(m["role"], m["role"])} for m in messages]
    try:
        text = tm.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt and
                                                not continue_final_message, **template_kwargs)
    except Exception as exc:  # jinja2 TemplateError (e.g. raise_exception in the template), missing template
        raise APIError(400, f"cannot apply the chat template: {exc}", param=param) from None
    if continue_final_message:
        last = msgs[-1].get("content") or ""
        cut = text.rfind(last) if last else -1
        if cut < 0:
            raise APIError(400, "continue_final_message: the last message's content is not in the rendered prompt",
                           param=param)
        text = text[:cut + len(last)]
    return text


def max_new_tokens(requested: int | None, prompts: list[list[int]], context_len: int,
                   default: Callable[[int], int], param: str, prompt_param: str) -> int:
    """Check the prompt against the context length; fill the default; clamp the output budget to
    the room the longest prompt leaves (`context_len - prompt`), which must be at least one token."""
    longest = max(len(p) for p in prompts)
    if longest >= context_len:
        raise APIError(400, f"the prompt is {longest} tokens, which leaves no room for output in the context "
                            f"length of {context_len} tokens", param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return max(0, min(default(longest), context_len - longest))
    if isinstance(requested, float) and requested.is_integer():
        requested = int(requested)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise APIError(400, f"{param} must be a non-negative integer, got {requested!r}", param=param)
    return min(requested, context_len - longest)


def chat_default(context_len: int) -> Callable[[int], int]:
    """Chat's default output budget: the rest of the context, capped."""
    return lambda prompt_len: min(context_len - prompt_len, CHAT_MAX_TOKENS_CAP)
