"""Anthropic (official client), Ollama and native APIs against the real server."""
from __future__ import annotations

import json

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # sent in the body: recent anthropic clients dropped the sampling keywords


def test_anthropic_message(anthropic_client, model_name):
    msg = anthropic_client.messages.create(model=model_name, max_tokens=20, messages=QUESTION, extra_body=GREEDY,
                                           system="You are a helpful assistant.")
    assert msg.type == "message" and msg.role == "assistant"
    assert "Paris" in msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens > 0


def test_anthropic_stream_matches_and_has_every_event(anthropic_client, http, model_name):
    args = dict(model=model_name, max_tokens=20, messages=QUESTION, extra_body=GREEDY)
    plain = anthropic_client.messages.create(**args)
    events = list(anthropic_client.messages.create(**args, stream=True))
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == plain.content[0].text
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == plain.stop_reason
    assert delta.usage.output_tokens == plain.usage.output_tokens
    body = {"model": model_name, "max_tokens": 5, "messages": QUESTION, "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as resp:  # raw, since the client hides pings
        names = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_stop_sequence(anthropic_client, model_name):
    msg = anthropic_client.messages.create(model=model_name, max_tokens=20, messages=QUESTION, extra_body=GREEDY,
                                           stop_sequences=["Paris"])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "Paris"
    assert "Paris" not in msg.content[0].text


def test_ollama_chat_plain_and_streamed(http, model_name):
    body = {"model": model_name, "messages": QUESTION, "options": {"temperature": 0, "num_predict": 20}}
    plain = http.post("/api/chat", json={**body, "stream": False}).json()
    assert plain["done"] is True and "Paris" in plain["message"]["content"]
    assert plain["eval_count"] > 0 and plain["prompt_eval_count"] > 0
    with http.stream("POST", "/api/chat", json=body) as resp:
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")
    assert "".join(line["message"]["content"] for line in lines) == plain["message"]["content"]


def test_ollama_generate_and_tags(http, model_name):
    out = http.post("/api/generate", json={"model": model_name, "prompt": "Name a color.", "stream": False,
                                           "options": {"temperature": 0, "num_predict": 5, "seed": 1}}).json()
    assert out["done"] is True and out["eval_count"] <= 5 and out["response"]
    raw = http.post("/api/generate", json={"model": model_name, "prompt": "The capital of France is", "raw": True,
                                           "stream": False, "options": {"temperature": 0, "num_predict": 3}}).json()
    assert "Paris" in raw["response"]
    bare = json.dumps({"model": model_name + ":latest", "prompt": "Hi", "stream": False,
                       "options": {"num_predict": 2}})
    assert http.post("/api/generate", content=bare).json()["done"] is True  # `curl -d` sends no JSON type
    tags = http.get("/api/tags").json()
    assert tags["models"][0]["name"] == model_name


def test_native_generate_plain_and_streamed(http):
    body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 6, "temperature": 0}}
    plain = http.post("/generate", json=body).json()
    assert "Paris" in plain["text"] and len(plain["output_ids"]) == plain["meta_info"]["completion_tokens"]
    assert plain["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert {"id", "prompt_tokens", "cached_tokens"} <= set(plain["meta_info"])
    with http.stream("POST", "/generate", json={**body, "stream": True}) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["text"] == plain["text"] and last["output_ids"] == plain["output_ids"]
    by_ids = http.post("/generate", json={"input_ids": [[504, 3575], [504]], "sampling_params": {"max_new_tokens": 2},
                                          "return_logprob": True, "top_logprobs_num": 2}).json()
    assert len(by_ids) == 2 and len(by_ids[0]["meta_info"]["output_token_logprobs"]) == 2


def test_info_flush_and_health_routes(http, model_name):
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/health_generate").status_code == 200
    info = http.get("/get_model_info").json()
    assert info["served_model_name"] == model_name and info["context_len"] > 0 and info["is_generation"]
    assert info["weight_bytes"] > 100e6 and info["kv_cache_dtype"] == info["dtype"]  # SmolLM2-135M, float32
    server_info = http.get("/get_server_info").json()
    assert {"kv_used_tokens", "kv_total_tokens", "num_running", "cache_hit_rate"} <= set(server_info)
    assert "api_key" not in server_info
    assert http.post("/flush_cache").json()["ok"] is True


def test_plugins_lists_the_cpu_backend_in_use(http):
    body = http.get("/v1/plugins").json()
    assert body["in_use"]["attention"]["name"] == "cpu"
    assert body["in_use"]["attention"]["reason"]
    names = {c["name"]: c for c in body["components"] if c["kind"] == "attention"}
    assert names["cpu"]["available"] is True and names["torch_native"]["available"] is True


def test_metrics_has_the_histograms(http):
    http.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 3}})
    text = http.get("/metrics").text
    for name in ("jackfield_time_to_first_token_seconds_bucket", "jackfield_inter_token_latency_seconds_bucket",
                 "jackfield_e2e_request_latency_seconds_bucket", "jackfield_prompt_tokens_total",
                 "jackfield_generation_tokens_total", "jackfield_cached_tokens_total", "jackfield_num_running_reqs",
                 "jackfield_num_queued_reqs", "jackfield_kv_usage", "jackfield_cache_hit_rate"):
        assert name in text, name
    assert 'jackfield_requests_total{endpoint="/generate",status="200"}' in text


def test_metrics_split_time_to_first_token_into_stages(http):
    from jackfield.bench.stage_metrics import parse

    before = parse(http.get("/metrics").text)
    http.post("/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 2}})
    after = parse(http.get("/metrics").text)
    assert set(after) == {"http", "tokenize", "to_scheduler", "queue", "prefill", "to_server"}
    for stage, (total, count) in after.items():
        assert count == before.get(stage, (0.0, 0.0))[1] + 1, stage
        assert 0.0 <= total - before.get(stage, (0.0, 0.0))[0] < 60.0, stage
    # the prefill of a prompt takes longer than handing its first token on
    assert after["prefill"][0] - before.get("prefill", (0.0, 0.0))[0] > 0.0
    assert after["tokenize"][0] - before.get("tokenize", (0.0, 0.0))[0] > 0.0  # "Hello" was tokenized
