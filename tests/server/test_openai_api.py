"""OpenAI API against the real server, through the official `openai` client."""
from __future__ import annotations

import asyncio
import uuid

import pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_paris(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20)
    choice = resp.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens >= 0


def test_streamed_chat_concatenates_to_the_plain_text(openai_client, model_name):
    args = dict(model=model_name, messages=QUESTION, temperature=0, max_tokens=24)
    plain = openai_client.chat.completions.create(**args)
    chunks = list(openai_client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_n2_returns_two_choices(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=QUESTION, n=2, max_tokens=8,
                                                 temperature=0.9, seed=7)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert all(c.message.content for c in resp.choices)
    assert resp.usage.completion_tokens >= 2  # counted over both choices


def test_stop_sequence_is_honoured(openai_client, model_name):
    plain = openai_client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in plain.choices[0].message.content
    resp = openai_client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stop=["Paris"])
    text = resp.choices[0].message.content
    assert "Paris" not in text and plain.choices[0].message.content.startswith(text)
    assert resp.choices[0].finish_reason == "stop"
    streamed = openai_client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0,
                                                     max_tokens=20, stop=["Paris"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text


def test_chat_logprobs_are_consistent_under_greedy(openai_client, model_name):
    resp = openai_client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=8,
                                                 logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)
        assert item.token == item.top_logprobs[0].token
        assert item.logprob <= 0 and item.bytes == list(item.token.encode())
    assert "".join(i.token for i in content).startswith(resp.choices[0].message.content[:10])


def test_completion_logprobs_shape(openai_client, model_name):
    resp = openai_client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=5,
                                            temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    n = resp.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    assert "Paris" in resp.choices[0].text


def test_completion_prompt_forms(openai_client, model_name):
    resp = openai_client.completions.create(model=model_name, prompt=["Hello", "The sky is"], max_tokens=3, n=2,
                                            temperature=0)
    assert sorted(c.index for c in resp.choices) == [0, 1, 2, 3]
    ids = openai_client.completions.create(model=model_name, prompt=[[504, 3575, 282], [504]], max_tokens=2)
    assert len(ids.choices) == 2
    default = openai_client.completions.create(model=model_name, prompt="Once upon a time", temperature=0,
                                               extra_body={"ignore_eos": True})
    assert default.usage.completion_tokens == 16


def test_sglang_extra_fields_are_accepted(openai_client, model_name):
    resp = openai_client.chat.completions.create(
        model=model_name, messages=QUESTION, max_tokens=6, temperature=0.7, top_p=0.9, seed=3,
        presence_penalty=0.1, frequency_penalty=0.1, logit_bias={"42": -5}, user="test",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True, "min_tokens": 2,
                    "skip_special_tokens": True, "stop_token_ids": [2], "no_stop_trim": False})
    assert resp.usage.completion_tokens == 6


def test_models_lists_the_served_model(openai_client, model_name):
    assert [m.id for m in openai_client.models.list().data] == [model_name]


def test_shared_prefix_is_served_from_the_cache(openai_client, model_name):
    prefix = f"Document {uuid.uuid4().hex}. " + " ".join(f"item{i} is listed." for i in range(80))
    first = openai_client.completions.create(model=model_name, prompt=prefix + " Question one:", max_tokens=1)
    second = openai_client.completions.create(model=model_name, prompt=prefix + " Question two:", max_tokens=1)
    assert first.usage.prompt_tokens > 250
    assert second.usage.prompt_tokens_details.cached_tokens > 200


def test_32_concurrent_streams_all_complete(server, model_name):
    from openai import AsyncOpenAI

    async def one(client, i: int) -> tuple[str, str]:
        stream = await client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": f"Count to {i % 7 + 2}."}], max_tokens=8,
            temperature=0.5, seed=i, stream=True)
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(finish in ("stop", "length") for _, finish in results)
    assert sum(1 for text, _ in results if text) >= 30
