"""OpenAI response pieces: finish reasons, usage, and logprobs in the chat and completions shapes."""
from __future__ import annotations

from jackfield.io_struct import FinishReason, TokenLogprob
from jackfield.server.chat_output import ChatPlan, ChoiceDelta, ChoiceParser, ChoiceResult
from jackfield.server.generation import Result

# SamplingParams names -> OpenAI names, for error messages and `param`.
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "top_logprobs_num": "top_logprobs",
                "json_schema": "response_format.json_schema.schema"}
COMPLETION_NAMES = {**OPENAI_NAMES, "top_logprobs_num": "logprobs"}


def finish_reason(finish: FinishReason | None) -> str | None:
    return finish.to_openai() if finish is not None else None


def chat_finish_reason(finish: FinishReason | None, called: bool) -> str | None:
    """`tool_calls` when a choice that stopped by itself made calls."""
    reason = finish_reason(finish)
    return "tool_calls" if called and reason == "stop" else reason


def chat_message(whole: ChoiceResult, plan: ChatPlan) -> dict:
    """`choices[i].message` of a finished choice: content (null beside calls), reasoning, tool calls."""
    calls = [{"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for cid, c in whole.calls]
    message = {"role": "assistant", "content": whole.content or (None if calls else "")}
    if plan.reasoning is not None:
        message["reasoning_content"] = whole.reasoning or None
    if calls:
        message["tool_calls"] = calls
    return message


def chat_delta(split: ChoiceParser, piece: ChoiceDelta, plan: ChatPlan) -> dict:
    """`choices[i].delta` of a chunk: a call's first piece carries index, id, type and name; later
    pieces carry its index and the next arguments fragment (OpenAI's streamed tool_calls)."""
    delta: dict = {}
    if piece.reasoning:
        delta["reasoning_content"] = piece.reasoning
    if piece.content:
        delta["content"] = piece.content
    items: list[dict] = []
    for p in piece.calls:
        if items and items[-1]["index"] == p.index:
            items[-1]["function"]["arguments"] += p.arguments
        elif p.name is not None:
            items.append({"index": p.index, "id": split.call_ids[p.index], "type": "function",
                          "function": {"name": p.name, "arguments": p.arguments}})
        else:
            items.append({"index": p.index, "function": {"arguments": p.arguments}})
    if items:
        delta["tool_calls"] = items
    return delta


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def results_usage(results: list[Result], n: int) -> dict:
    """Usage of a call: each prompt counted once (its first choice), every choice's completion."""
    firsts = results[::n]
    return usage(sum(r.prompt_tokens for r in firsts), sum(r.completion_tokens for r in results),
                 sum(r.cached_tokens for r in firsts))


class UsageTracker:
    """Usage of a streamed call, from the latest counts seen per choice."""

    def __init__(self, size: int, n: int):
        self.n = n
        self.counts = [(0, 0, 0)] * size

    def add(self, index: int, out) -> None:
        if out.prompt_tokens or out.completion_tokens:
            self.counts[index] = (out.prompt_tokens, out.completion_tokens, out.cached_tokens)

    def usage(self) -> dict:
        firsts = self.counts[::self.n]
        return usage(sum(c[0] for c in firsts), sum(c[1] for c in self.counts), sum(c[2] for c in firsts))


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False) if tokenizer is not None else str(token_id)


def _entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, logprobs: list[TokenLogprob]) -> dict:
    """`choices[i].logprobs` of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = []
    for lp in logprobs:
        item = _entry(tokenizer, lp.token_id, lp.logprob)
        item["top_logprobs"] = [_entry(tokenizer, t, v) for t, v in lp.top]
        content.append(item)
    return {"content": content}


def completion_logprobs(tokenizer, logprobs: list[TokenLogprob], offset: int = 0) -> dict:
    """`choices[i].logprobs` of a completion: tokens, token_logprobs, top_logprobs, text_offset (a
    first prompt token, which has no logprob, gets null in token_logprobs and top_logprobs)."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in logprobs:
        text = token_text(tokenizer, lp.token_id)
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({token_text(tokenizer, t): v for t, v in lp.top} if lp.logprob is not None else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
